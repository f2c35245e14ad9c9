"""Model names a user mistypes get the closest real names; a missing local-dir folder is named as such."""

from __future__ import annotations

import pytest
from conftest import make_folder, run_cli


def test_mistyped_model_suggests_the_closest_names(tmp_path):
    src = make_folder(tmp_path / "photos", n=2)
    r = run_cli("build-index", src, "-w", tmp_path / "ws", "--model", "ViT-B-99", "--pretrained", "none",
                expect=None)
    assert r.exit_code != 0
    assert "unknown model architecture 'ViT-B-99'; did you mean ViT-B-32" in r.output
    assert "coca" not in r.output                      # not the alphabetical head of the list
    r = run_cli("build-index", src, "-w", tmp_path / "ws2", "--model", "vit-b-32", "--pretrained", "none",
                expect=None)
    assert "did you mean ViT-B-32" in r.output         # case is forgiven in the suggestion


def test_missing_local_dir_says_the_folder_does_not_exist(tmp_path):
    src = make_folder(tmp_path / "photos", n=2)
    missing = tmp_path / "no-such-model"
    r = run_cli("build-index", src, "-w", tmp_path / "ws", "--model", f"local-dir:{missing}", expect=None)
    assert r.exit_code != 0
    assert f"folder {missing} does not exist" in r.output and "Hugging Face" not in r.output
    empty = tmp_path / "empty-model"
    empty.mkdir()
    r = run_cli("build-index", src, "-w", tmp_path / "ws3", "--model", f"local-dir:{empty}", expect=None)
    assert "has no open_clip_config.json" in r.output


# --- weights that cannot be had: say how to get them here, or how to go on without them ---------

DEFAULT_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, whatever this machine has cached (the hub client
    reads its cache folder at call time)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _says_how_to_go_on(output: str) -> None:
    # the exact command that writes the file open_clip itself fetches for this tag, and the file to pass
    assert (f"python -c \"from huggingface_hub import hf_hub_download; hf_hub_download('{DEFAULT_REPO}', "
            "'open_clip_pytorch_model.bin', local_dir='.')\"") in output
    assert "--pretrained /path/to/open_clip_pytorch_model.bin" in output
    # and the two ways to go on with random weights
    assert "--fallback-model curate-tiny" in output and "--model curate-tiny --pretrained none" in output


def test_default_weights_missing_offline_say_how_to_fetch_them_and_how_to_go_on(tmp_path, empty_hub_cache,
                                                                                 monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = make_folder(tmp_path / "photos", n=2)
    r = run_cli("build-index", src, "-w", tmp_path / "ws", expect=1)
    assert f"are not in the Hugging Face cache ({empty_hub_cache}) and HF_HUB_OFFLINE is set" in r.output
    _says_how_to_go_on(r.output)
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "ws").exists()


def test_default_weights_missing_without_network_say_so_after_a_bounded_probe(tmp_path, empty_hub_cache,
                                                                              monkeypatch):
    """No HF_HUB_OFFLINE: the hub's address is probed (a name lookup, a TCP connect, each bounded)
    before the hub client, which would retry for 20-46 s, is let near the network; the wait is said."""
    import socket

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    src = make_folder(tmp_path / "photos", n=2)
    r = run_cli("build-index", src, "-w", tmp_path / "ws", expect=1)
    assert "checking whether 127.0.0.1 answers (at most 3 s) ..." in r.output
    assert "and 127.0.0.1 cannot be reached (no network?)" in r.output
    _says_how_to_go_on(r.output)


def test_the_fallback_says_the_workspace_keeps_it_and_a_rerun_says_when_the_weights_are_here(
        tmp_path, empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = make_folder(tmp_path / "photos", n=2)
    ws = tmp_path / "ws"
    cmd = ("build-index", src, "-w", ws, "--fallback-model", "curate-tiny", "--workers", "0")
    r = run_cli(*cmd)
    assert "going on with curate-tiny on RANDOM weights" in r.output
    assert "this workspace keeps curate-tiny on later runs" in r.output
    r = run_cli(*cmd)  # the same command again (a second `make demo`): still the fallback, and said
    assert f"NOTE: {ws} was built with the fallback model on RANDOM weights because ViT-B-32" in r.output
    assert "get those weights" in r.output and "here now" not in r.output
    # the weights arrive in the hub cache (its real layout: refs/main names the snapshot)
    repo = empty_hub_cache / ("models--" + DEFAULT_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    r = run_cli(*cmd)
    assert "those weights are here now: for real labels, build a new workspace: " \
           f"`curate build-index {src} -w NEW_WS --fallback-model curate-tiny`" in r.output
    assert "model: curate-tiny (random weights" in r.output   # the workspace kept its model


def test_open_clip_root_logger_lines_are_not_shown_unless_asked_for(caplog):
    """open_clip logs "No pretrained weights loaded ..." on the root logger at every model build:
    a script using the API sees it only when it asked for INFO logs (as `curate -v` does)."""
    import logging

    from curate.ingest.model import forget_loaded, load_encoder

    forget_loaded()   # each load below builds the model (load_encoder hands over the last one it built)
    caplog.set_level(logging.WARNING)
    load_encoder("curate-tiny", "none", "cpu")
    assert not [r for r in caplog.records if "open_clip" in r.pathname]
    caplog.set_level(logging.INFO)
    forget_loaded()
    load_encoder("curate-tiny", "none", "cpu")
    assert any("No pretrained weights loaded" in r.getMessage() for r in caplog.records)


# --- a device this machine lacks: one line before any work, from every command that takes --device -

def test_a_device_torch_cannot_use_is_a_one_line_error(tmp_path, built_workspace):
    import torch

    src = make_folder(tmp_path / "photos", n=2)
    tiny = ("--model", "curate-tiny", "--pretrained", "none")
    r = run_cli("build-index", src, "-w", tmp_path / "ws", *tiny, "--device", "cuda:99", expect=1)
    assert r.output.startswith("curate: --device cuda:99: torch here sees ") and "internal error" not in r.output
    assert not (tmp_path / "ws").exists()
    r = run_cli("build-index", src, "-w", tmp_path / "ws", *tiny, "--device", "gpu", expect=1)
    assert "curate: --device gpu: not a device; give auto, cpu, cuda or cuda:N" in r.output
    r = run_cli("search", "a bridge", "-w", built_workspace, "--device", "cuda:99", expect=1)
    assert "curate: --device cuda:99: torch here sees " in r.output
    if not torch.cuda.is_available():  # this machine has no GPU: plain `cuda` is refused the same way
        for args in (("build-index", src, "-w", tmp_path / "ws", *tiny), ("search", "a bridge", "-w", built_workspace)):
            r = run_cli(*args, "--device", "cuda", expect=1)
            assert "--device cuda: torch here sees no CUDA device" in r.output and "use --device cpu" in r.output


@pytest.mark.slow
def test_a_hub_that_answers_without_the_file_ends_in_the_same_advice(tmp_path):
    """The hub answers (a real HTTP server on 127.0.0.1, 404 for every file): the download is
    said, tried once, and its failure ends in the same one line of what to do. A subprocess: the
    hub client reads HF_ENDPOINT when it is imported."""
    import http.server
    import os
    import subprocess
    import sys
    import threading

    asked = []

    class NotHere(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *_args):
            pass

    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotHere)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if k not in
               ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}", "HF_HUB_CACHE": str(tmp_path / "cache")}
        src = make_folder(tmp_path / "photos", n=2)
        r = subprocess.run([sys.executable, "-m", "curate.cli", "build-index", str(src), "-w", str(tmp_path / "ws")],
                           capture_output=True, text=True, env=env, timeout=300)
    finally:
        hub.shutdown()
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "checking whether 127.0.0.1 answers" in lines[0] and lines[1].startswith("downloading the weights of ViT-B-32")
    assert lines[2].startswith("curate: could not obtain the weights of ViT-B-32 pretrained='laion2b_s34b_b79k' "
                               "(tried the Hugging Face cache, then a download: ")
    _says_how_to_go_on(lines[2])
    assert any(p.startswith(f"/{DEFAULT_REPO}/") for p in asked) and not (tmp_path / "ws").exists()
