# sparsenet: `make demo` sets everything up and trains FashionMNIST; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EPOCHS ?= 10
RANKS ?= 3
MPI ?= pypi
# The venv's mpiexec (MPICH from PyPI) when setup installed it, else the system's.
MPIEXEC ?= $(if $(wildcard $(VENV)/bin/mpiexec),$(VENV)/bin/mpiexec,mpiexec)
STAMP := $(VENV)/.installed

.PHONY: setup data demo demo-sequential test test-slurm bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# MPICH from PyPI in the venv (mpi4py's wheels load it), whatever MPI the system has: a system
	@# MPICH (Debian's libmpich12) does not provide the libmpi.so.12 those wheels look for.
	@# `make setup MPI=system` builds mpi4py against the system's MPI instead (clusters, srun).
	@if [ "$(MPI)" = system ]; then $(PY) -m pip install -q --no-binary mpi4py --no-cache-dir mpi4py; \
	  else $(PY) -m pip install -q mpich; fi
	$(PY) -m pip install -q -e '.[test,mpi]'
	touch $(STAMP)

setup: $(STAMP)

# FashionMNIST from Debian's package where possible; otherwise sparsenet looks in its cache or downloads.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "FashionMNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  { (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) && \
	    echo "FashionMNIST installed from Debian" || \
	    echo "apt-get could not install dataset-fashion-mnist: sparsenet will use its cache or download"; }; \
	else echo "no Debian package available: sparsenet will use ~/.cache/sparsenet or download FashionMNIST"; fi

# WASAP-SGD: 1 parameter server + 2 workers.
demo: setup data
	$(MPIEXEC) -n $(RANKS) $(VENV)/bin/sparsenet train configs/fashion_mnist.yaml configs/fashion_mnist_wasap.yaml --set train.epochs=$(EPOCHS) --out runs/demo --overwrite

demo-sequential: setup data
	$(VENV)/bin/sparsenet train configs/fashion_mnist.yaml --set train.epochs=$(EPOCHS) --out runs/demo-sequential --overwrite

test: setup data
	$(PY) -m pytest -q tests

# slurm/train.sbatch on a local single-node Slurm (installs slurm-wlm, munge, Debian's MPICH and Open MPI as root
# with apt; else skips): Slurm's timed signal stops it, it requeues and resumes; with pip's MPICH, Debian's MPICH
# (srun --mpi=pmi2) and Debian's Open MPI (--mpi=pmix).
test-slurm: setup
	$(PY) slurm/test_local.py

bench: setup data
	$(PY) scripts/bench_fashion_mnist.py
	$(PY) scripts/bench_parallel.py
	$(PY) scripts/bench_transport.py

clean:
	rm -rf $(VENV) runs .pytest_cache
