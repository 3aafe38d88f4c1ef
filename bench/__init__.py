"""The load and memory benchmarks (bench/README.md): `python -m bench.run`, from the repo root."""
