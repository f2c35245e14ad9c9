"""load_encoder keeps the last encoder it made for the process: the same model loaded again
(api.search in a loop, classify after build-index) is handed over, not read and built again;
anything it was made from that differs (model, weights, device, precision, a checkpoint file
replaced since) makes a new one."""

from __future__ import annotations

import os

import numpy as np
import torch

from curate.ingest.model import forget_loaded, load_encoder


def _weights(enc) -> np.ndarray:
    return enc.model.visual.conv1.weight.detach().float().numpy().copy()


def test_the_same_model_is_handed_over_and_another_is_made():
    forget_loaded()
    a = load_encoder("curate-tiny", "none", "cpu", "fp32")
    assert load_encoder("curate-tiny", "none", "cpu", "fp32") is a
    other_name = load_encoder("curate-tiny", "random", "cpu", "fp32")   # the same weights, named otherwise:
    assert other_name is not a and other_name.identity.pretrained == "random"  # its own identity
    a = load_encoder("curate-tiny", "none", "cpu", "fp32")
    b = load_encoder("curate-tiny", "none", "cpu", "bf16")              # another precision: its own
    assert b is not a and b.precision == "bf16"
    assert next(b.model.visual.parameters()).dtype == torch.bfloat16
    assert next(a.model.visual.parameters()).dtype == torch.float32     # the first one was not cast
    c = load_encoder("curate-tiny", "none", "cpu", "fp32")              # only the last one is kept
    assert c is not a and np.array_equal(_weights(c), _weights(a))      # seeded: the same weights again
    forget_loaded()
    assert load_encoder("curate-tiny", "none", "cpu", "fp32") is not c


def test_a_checkpoint_replaced_on_disk_is_read_again(tmp_path):
    from safetensors.torch import save_file

    forget_loaded()
    base = load_encoder("curate-tiny", "none", "cpu", "fp32").model.state_dict()
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.clone() * 0.5 for k, v in base.items()}, str(ckpt))
    first = load_encoder("curate-tiny", str(ckpt), "cpu", "fp32")
    assert load_encoder("curate-tiny", str(ckpt), "cpu", "fp32") is first
    save_file({k: v.clone() * 0.25 for k, v in base.items()}, str(ckpt))
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))   # a later mtime, whatever the clock's grain
    second = load_encoder("curate-tiny", str(ckpt), "cpu", "fp32")
    assert second is not first
    np.testing.assert_allclose(_weights(second), _weights(first) * 0.5, rtol=1e-6)


def test_the_apps_text_only_model_is_its_own(built_workspace):
    """The app drops its model's image tower (curate/app/warm.py): it loads an encoder of its
    own, so the one this process shares keeps its tower and is still handed over."""
    from curate.app.warm import Warm
    from curate.core.workspace import Workspace

    forget_loaded()
    shared = load_encoder("curate-tiny", "none", "cpu")
    before = _weights(shared)
    warm = Warm(Workspace(built_workspace), device="cpu").start()
    try:
        warm.thread.join(timeout=120)
        assert warm.state == "ready", warm.error
        assert warm.encoder is not shared and isinstance(warm.encoder.model.visual, torch.nn.Identity)
    finally:
        warm.close()
    assert load_encoder("curate-tiny", "none", "cpu") is shared
    assert isinstance(shared.model.visual, torch.nn.Module) and not isinstance(shared.model.visual, torch.nn.Identity)
    np.testing.assert_array_equal(_weights(shared), before)
