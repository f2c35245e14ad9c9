"""Model names a user mistypes get the closest real names; a missing local-dir folder is named as such."""

from __future__ import annotations

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
