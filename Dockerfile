# syntax=docker/dockerfile:1
# taskledger's image: wheels are built in one stage, and only they (in a virtual
# environment without pip) reach the runtime stage. Build: docker build -t taskledger .
# The dependencies are requirements.lock's and the build backend build-requirements.lock's,
# each checked against its hashes; pin the base image by digest too
# (python:3.11-slim-bookworm@sha256:…) for byte-for-byte rebuilds.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The locked dependencies first: this layer is rebuilt only when the lock changes. Only
# their published wheels: an sdist would be built with a build backend fetched unpinned.
COPY requirements.lock ./
RUN pip wheel --require-hashes --only-binary :all: --wheel-dir /wheels -r requirements.lock
# The build backend from its lock (this stage only: it never reaches the runtime), then
# taskledger's wheel built with it, without isolation (which would fetch an unpinned
# setuptools) and without an index: nothing is resolved at build time.
COPY build-requirements.lock ./
RUN pip install --require-hashes --no-deps --root-user-action=ignore -r build-requirements.lock
COPY pyproject.toml README.md ./
COPY write_side ./write_side
COPY read_side ./read_side
COPY api ./api
COPY infrastructure ./infrastructure
RUN pip wheel --no-index --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# A fixed uid and gid, so that Kubernetes' runAsNonRoot can check them (it needs a
# number) and volumes can be given to them: deploy/kubernetes uses the same numbers.
ARG UID=10001
RUN groupadd --system --gid ${UID} taskledger \
    && useradd --system --uid ${UID} --gid ${UID} --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin taskledger
ENV VIRTUAL_ENV=/opt/taskledger \
    PATH=/opt/taskledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The wheels are mounted from the first stage, not copied: no layer keeps them. The base
# image's pip installs into the venv, which has none of its own; --no-deps with every
# wheel given installs exactly the lock, and pip check proves it complete.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv --without-pip ${VIRTUAL_ENV} \
    && pip --python ${VIRTUAL_ENV}/bin/python install --no-index --no-deps --no-cache-dir \
       --disable-pip-version-check /wheels/*.whl \
    && pip --python ${VIRTUAL_ENV}/bin/python check --disable-pip-version-check
# DATA_DIR holds the SQLite files when DATABASE_URL is unset (PostgreSQL writes nothing
# here): the one folder the service may write to.
WORKDIR /app
RUN install --directory --owner=${UID} --group=${UID} /app/data
ENV APP_ENV=production \
    DATA_DIR=/app/data
USER ${UID}:${UID}
EXPOSE 8000
# The slim image has no curl: the standard library asks. /healthz: the process answers
# (readiness, /readyz, is the orchestrator's business: compose and Kubernetes ask it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["taskledger", "serve", "--host", "0.0.0.0", "--port", "8000"]
