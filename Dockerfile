FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY write_side ./write_side
COPY read_side ./read_side
COPY api ./api
COPY infrastructure ./infrastructure
RUN pip install --no-cache-dir . && useradd --create-home taskledger
USER taskledger
ENV APP_ENV=production
EXPOSE 8000
CMD ["taskledger", "serve", "--host", "0.0.0.0", "--port", "8000"]
