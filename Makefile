# The two commands README promises; each creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test clean

# constraints.txt pins the versions the suite last passed with; drop "-c constraints.txt" to try newer ones.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --quiet --compile-bytecode -e ".[test]" -c constraints.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medtransfer run examples/quickstart.yaml --output runs/quickstart

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) runs
