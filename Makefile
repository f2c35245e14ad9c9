# curate: `make demo` installs what the main job needs and runs it on the bundled photos; `make test`
# adds the test tools and runs the tests; `make install RAY=1` adds Ray for build-index --engine ray.
VENV    ?= .venv
PY      := $(VENV)/bin/python
# torch 2.14.1 / torchvision 0.29.1 are the pair that import together here (pip takes them from
# local disk on the project's machines); pyproject itself only states ranges.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
# cpu or gpu: faiss-cpu and faiss-gpu install the same module, so exactly one of them.
FAISS   ?= cpu
DEMO_WS ?= demo-ws
# RAY=1: the `ray` extra (Ray Data) for `build-index --engine ray`. The test extra holds it too, so
# that the Ray engine's tests run wherever `make test` does; RAY=1 states it for an install that is to stay.
RAY     ?=
comma   := ,
EXTRAS  := $(FAISS)$(if $(RAY),$(comma)ray)

.PHONY: install install-test demo test bench lint clean

# The main job's install: torch, curate and its dependencies, one FAISS. The test tools (pytest,
# pytest-xdist, ruff, playwright, webdataset, Ray) come on top of it, only for the targets that use them.
install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[$(EXTRAS),test]'
	touch $@

demo: install
	$(VENV)/bin/curate build-index samples/manifest.csv -w $(DEMO_WS) --fallback-model curate-tiny --precision fp32
	$(VENV)/bin/curate classify -w $(DEMO_WS) --label-set places205 --prompts raw
	$(VENV)/bin/curate classify -w $(DEMO_WS) --label-set places205 --prompts natural
	$(VENV)/bin/curate sql -w $(DEMO_WS) "select i.source_id, i.expected_label, p.label, round(p.prob, 4) as prob, p.label2, round(p.prob2, 4) as prob2 from predictions p join items i using (id) order by id"
	$(VENV)/bin/curate filter -w $(DEMO_WS) --min-prob 0 --out $(DEMO_WS)/labelled.csv
	$(VENV)/bin/curate compare places205-raw places205-natural -w $(DEMO_WS) --out $(DEMO_WS)/compare

test: install-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(PY) bench/bench_embed.py
	HF_HUB_OFFLINE=1 $(PY) bench/bench_import.py
	@if [ -f bench/bench_classify.py ]; then HF_HUB_OFFLINE=1 $(PY) bench/bench_classify.py; fi

lint: install-test
	$(VENV)/bin/ruff check curate tests bench

clean:
	rm -rf $(DEMO_WS) bench/work .pytest_cache
