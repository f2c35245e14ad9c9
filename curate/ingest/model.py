"""The encoder: one open_clip model, its preprocessing and tokenizer.

`load_encoder` is the only place that knows how weights are found: an open_clip
pretrained tag (hub cache first, then download), a local checkpoint file, a
`local-dir:` folder, or `none` for random initialisation (tests, smoke runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.workspace import ModelIdentity
from ..errors import InputError
from . import precision as precision_rules

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
TINY_MODEL = "curate-tiny"

if TYPE_CHECKING:  # torch is imported where a model is built or run: the CLI starts without it
    import torch

log = logging.getLogger(__name__)


class WeightsUnavailable(InputError, RuntimeError):
    """Pretrained weights could not be obtained; the message is one line for the user: the
    reason, then (`hint`) how to get them here or go on without them."""

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason}. {hint}" if hint else reason)
        self.reason = reason


def register_configs() -> None:
    import open_clip

    if TINY_MODEL in open_clip.list_models():
        return
    for entry in files("curate.model_configs").iterdir():
        if entry.name.endswith(".json"):
            open_clip.add_model_config(Path(str(entry)))


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Switch huggingface_hub's offline flag for one call (it reads it at call time)."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - open_clip depends on it
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or old
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


class _OpenClipRootLines(logging.Filter):
    """open_clip logs on the root logger ("WARNING:root:No pretrained weights loaded ...",
    "ERROR:root:Failed to download ..."): things curate says itself, in its own words. Dropped
    unless the root logger is at INFO or below (`curate -v`, or a script that asked for logs)."""

    def __init__(self) -> None:
        super().__init__()
        import open_clip

        self.folder = str(Path(open_clip.__file__).parent)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.folder) or logging.getLogger().isEnabledFor(logging.INFO)


@contextlib.contextmanager
def _open_clip_lines_dropped():
    root = logging.getLogger()
    drop = _OpenClipRootLines()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def pick_device(device: str | None = None) -> str:
    """auto: the GPU where torch sees one, else the CPU. A device named by the user is checked
    against what torch here can use, so that a missing one is a one-line error before any work
    (torch's own errors come from deep in a model build, worded for torch's developers)."""
    import torch

    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device}: not a device; give auto, cpu, cuda or cuda:N (mps on a Mac)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"--device {device}: torch here sees no CUDA device (no GPU, no driver, or a CPU-only "
                             "torch build); use --device cpu, or auto (the GPU where there is one)")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"--device {device}: torch here sees {n} CUDA device{'s' if n > 1 else ''} "
                             f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {device}: torch here has no MPS (Apple GPU) backend; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"--device {device}: curate runs its model on auto, cpu, cuda or cuda:N (mps on a Mac)")
    return device


@dataclass
class Encoder:
    model: torch.nn.Module
    preprocess: object  # torchvision transform for one PIL image
    tokenizer: object
    identity: ModelIdentity
    device: str
    image_size: int
    context_length: int
    precision: str = "fp32"      # fp32, bf16 or fp16 (curate/ingest/precision.py): images and text alike
    mode: str = "fp32"           # how it runs: fp32, autocast, or weights (cast to bf16 by load_encoder)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.float().exp().item())

    # -- images ---------------------------------------------------------------
    def encode_image_tensor(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        x = batch.to(self.device, non_blocking=True)
        if self.mode == "weights":
            x = x.to(torch.bfloat16)
        with torch.inference_mode():
            with self._autocast():
                feats = self.model.encode_image(x)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    # -- text -----------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text needs (without start/end markers), to record truncation."""
        enc = getattr(self.tokenizer, "encode", None)
        if enc is None:
            return [-1] * len(texts)
        return [len(enc(t)) for t in texts]

    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        import torch

        tokens = tokens.to(self.device)
        with torch.inference_mode():
            with self._autocast():
                feats = self._encode_text_trimmed(tokens)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = [self.encode_tokens(self.tokenize(texts[s : s + batch_size])) for s in range(0, len(texts), batch_size)]
        if not out:
            return np.zeros((0, self.identity.embed_dim), np.float32)
        return np.concatenate(out)

    def _encode_text_trimmed(self, tokens: torch.Tensor) -> torch.Tensor:
        """encode_text on tokens cut to the longest text in the batch.

        A causal text tower pooled at the end-of-text token never looks at the padding
        after it, so cutting trailing padding gives the same vectors 5-8x faster on
        CPU. Only done for the architecture where that holds (open_clip.CLIP with a
        causal mask and argmax pooling); anything else gets the model's own path.
        """
        import open_clip
        import torch
        from open_clip.transformer import text_global_pool

        m = self.model
        if not (isinstance(m, open_clip.CLIP) and getattr(m, "text_pool_type", None) == "argmax"
                and m.attn_mask is not None):
            return m.encode_text(tokens)
        nonzero = (tokens != 0).any(dim=0).nonzero()
        n = int(nonzero[-1]) + 1 if len(nonzero) else 1
        t = tokens[:, :n]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(t).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
        x = m.ln_final(x)
        x = text_global_pool(x, t, m.text_pool_type)
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x

    def _autocast(self):
        if self.mode != "autocast":
            return contextlib.nullcontext()
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.split(":")[0], dtype=dtype)


def load_encoder(model_name: str = DEFAULT_MODEL, pretrained: str | None = DEFAULT_PRETRAINED,
                 device: str | None = None, precision: str = "auto",
                 say: Callable[[str], None] | None = None, shared: bool = True) -> Encoder:
    """Build the open_clip model; raise WeightsUnavailable with a one-line reason.

    `say` hears what it is doing while it waits (a probe of the hub, a download): one line each.

    `shared`: the encoder is the process's last one when that was made from the same (see
    _LOADED), and is kept as such, so nobody may change it; False: a new one of the caller's own
    (the app drops its image tower), kept by nobody else.

    `precision`: fp32, bf16, fp16, or auto: fp16 on CUDA, bf16 on a CPU with native bf16,
    fp32 elsewhere; bf16 on a CPU casts the weights (curate/ingest/precision.py).
    """
    import open_clip

    register_configs()
    device = pick_device(device)
    precision = precision_rules.check(precision)
    if precision == "auto":
        precision = precision_rules.for_device(device)
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise WeightsUnavailable(f"--model {model_name}: folder {folder} does not exist (a local-dir: model is a "
                                     "folder holding open_clip_config.json and open_clip_model.safetensors)")
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsUnavailable(f"--model {model_name}: {folder} has no open_clip_config.json")
    elif model_name not in open_clip.list_models() and not model_name.startswith("hf-hub:"):
        raise WeightsUnavailable(f"unknown model architecture '{model_name}'{suggest_models(model_name)} "
                                 "(all names: `python -c 'import open_clip; print(open_clip.list_models())'`)")
    tag = None if pretrained in (None, "", "none", "random") else pretrained
    random_weights = tag is None and not model_name.startswith(("hf-hub:", "local-dir:"))

    if tag is not None and _looks_like_path(tag):
        if not Path(tag).expanduser().exists():
            raise WeightsUnavailable(f"checkpoint file not found: {tag}")
        tag = str(Path(tag).expanduser().resolve())

    if random_weights:
        log.info("%s: random weights (--pretrained none): embeddings carry no meaning", model_name)
    # `pretrained` as given too: the encoder's identity (what a workspace records) names it so
    key = (model_name, pretrained, tag, device, precision, _source_state(model_name, tag))
    with _LOADED_LOCK:
        if shared and _LOADED and _LOADED[0][0] == key:
            return _LOADED[0][1]

    def build(offline: bool):
        with _hub_offline(offline), warnings.catch_warnings(), _open_clip_lines_dropped():
            warnings.simplefilter("ignore")
            return open_clip.create_model_and_transforms(model_name, pretrained=tag, device=device)

    if random_weights:
        import torch

        # Seeded, so every process (a resumed run, a test's reference) gets the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, preprocess = build(offline=True)
    elif tag is not None and not _looks_like_path(tag):
        model, preprocess = _build_from_tag(build, model_name, tag, say or log.info)
    else:
        try:
            model, _, preprocess = build(offline=True)
        except Exception as e:  # noqa: BLE001 - any loader failure becomes one clear line
            raise WeightsUnavailable(f"could not load {model_name} from {tag}: {_short(e)}") from None

    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    image_size = _image_size(model)
    embed_dim = _embed_dim(model, device, image_size)
    mode = precision_rules.mode(precision, device)
    if mode == "weights":
        _cast_weights_bf16(model)
    ident = ModelIdentity(model=model_name, pretrained=pretrained or "none", embed_dim=embed_dim,
                          random_weights=random_weights)
    encoder = Encoder(model=model, preprocess=preprocess, tokenizer=tokenizer, identity=ident, device=device,
                      image_size=image_size, context_length=int(getattr(tokenizer, "context_length", 77)),
                      precision=precision, mode=mode)
    if shared:
        with _LOADED_LOCK:
            _LOADED[:] = [(key, encoder)]
    return encoder


# The encoder this process loaded last, by what it was made from: loading the same model again in
# one process (api.search in a notebook's loop, api.classify after api.build_index, a search
# after a classify) hands it over instead of reading and building it again (seconds for
# ViT-B-32's weights). Only the last: a model holds hundreds of MB. A shared Encoder is never
# changed (a precision is part of what it was made from); a caller that changes its own loads it
# with shared=False (the app's text-only model).
_LOADED: list[tuple[tuple, Encoder]] = []
_LOADED_LOCK = threading.Lock()


def forget_loaded() -> None:
    """Drop the encoder load_encoder keeps for this process (its memory goes with the last reference)."""
    with _LOADED_LOCK:
        _LOADED.clear()


def _source_state(model_name: str, tag: str | None) -> tuple:
    """Size and mtime of the files a load reads from a path (a checkpoint, a local-dir: folder's
    files): a file replaced since is read again. Hub names and random weights: nothing to stat."""
    paths: list[Path] = []
    if tag is not None and _looks_like_path(tag):
        paths.append(Path(tag))
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:"):]).expanduser()
        try:
            paths += sorted(p for p in folder.iterdir() if p.is_file())
        except OSError:   # unreadable: the load below says so in its one line
            pass
    state = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        state.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(state)


def _cast_weights_bf16(model) -> None:
    """The model's weights and buffers to bf16, in place (half the memory), except the
    parameters no forward pass uses: logit_scale and logit_bias keep float32, which bf16
    would round (a logit scale of 100 would read 98.9)."""
    import torch

    keep = {name: p.detach().clone() for name in ("logit_scale", "logit_bias")
            if isinstance(p := getattr(model, name, None), torch.nn.Parameter)}
    model.to(torch.bfloat16)
    for name, value in keep.items():
        getattr(model, name).data = value


def suggest_models(name: str) -> str:
    """'; did you mean A, B?' with the architectures closest to a mistyped name, or ''."""
    import difflib

    import open_clip

    names = open_clip.list_models()
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=4, cutoff=0.6)
    return f"; did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""


def _build_from_tag(build, model_name: str, tag: str, say: Callable[[str], None]):
    """The hub cache first (no network, no wait); then, where the hub answers within seconds, a
    download. Every way it fails ends in WeightsUnavailable saying how to go on (fetch_hint)."""
    import open_clip

    known = open_clip.list_pretrained_tags_by_model(model_name)
    if known and tag not in known:
        raise WeightsUnavailable(
            f"'{tag}' is not a pretrained tag of {model_name}; known tags: {', '.join(known)}")
    try:
        model, _, preprocess = build(offline=True)
        return model, preprocess
    except Exception:  # noqa: BLE001
        pass
    what = f"the weights of {model_name} pretrained='{tag}' are not in the Hugging Face cache ({_hub_cache()})"
    if _env_true("HF_HUB_OFFLINE"):
        raise WeightsUnavailable(f"{what} and HF_HUB_OFFLINE is set", fetch_hint(model_name, tag))
    host, port = _probe_address()
    say(f"{what}; checking whether {host} answers (at most {PROBE_TIMEOUT_S:g} s) ...")
    if not _reachable(host, port, PROBE_TIMEOUT_S):
        raise WeightsUnavailable(f"{what} and {host} cannot be reached (no network?)",
                                 fetch_hint(model_name, tag))
    say(f"downloading the weights of {model_name} pretrained='{tag}' into the Hugging Face cache ...")
    try:
        model, _, preprocess = build(offline=False)
        return model, preprocess
    except Exception as e:  # noqa: BLE001
        raise WeightsUnavailable(
            f"could not obtain the weights of {model_name} pretrained='{tag}' (tried the Hugging Face cache, "
            f"then a download: {_short(e)})", fetch_hint(model_name, tag)) from None


# How long the reachability probe waits for a name lookup, then for a TCP connection: offline,
# the hub client would otherwise retry for 20-46 s before it gives up.
PROBE_TIMEOUT_S = 3.0


def fetch_hint(model_name: str, tag: str) -> str:
    """How to go on without these weights here: the exact command that fetches the checkpoint
    file on a connected machine (the file open_clip itself downloads for this tag), the
    --pretrained to pass once it is copied over, and the random-weights alternative."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    repo, filename = _hub_file(cfg)
    if repo:
        filename = filename or open_clip.constants.HF_WEIGHTS_NAME
        get = (f"pip install huggingface_hub && python -c \"from huggingface_hub import hf_hub_download; "
               f"hf_hub_download('{repo}', '{filename}', local_dir='.')\"")
    elif cfg.get("url"):
        filename = cfg["url"].rstrip("/").rsplit("/", 1)[-1]
        get = f"curl -L -o {filename} {cfg['url']}"
    else:
        return ("Pass a local checkpoint file with --pretrained /path/to/file, or go on with random weights "
                "(a pipeline check only): --fallback-model curate-tiny, or --model curate-tiny --pretrained none")
    return (f"To use them, on a machine with internet run: {get} ; copy {filename} here and pass "
            f"--model {model_name} --pretrained /path/to/{filename} . To go on without them (random weights: "
            f"a pipeline check only, the labels mean nothing): --fallback-model {TINY_MODEL}, or "
            f"--model {TINY_MODEL} --pretrained none")


def weights_cached(model_name: str, tag: str) -> bool:
    """Whether open_clip finds these weights without the network: a local file, or the hub cache."""
    if tag in ("", "none", "random"):
        return False
    if _looks_like_path(tag):
        return Path(tag).expanduser().is_file()
    import open_clip

    repo, filename = _hub_file(open_clip.get_pretrained_cfg(model_name, tag) or {})
    if not repo:
        return False
    from huggingface_hub import try_to_load_from_cache

    names = [filename] if filename else [open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME]
    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


def _hub_file(cfg: dict) -> tuple[str, str]:
    """open_clip's `hf_hub` entry ('owner/repo/' or 'owner/repo/file') as (repo, file or '')."""
    parts = (cfg.get("hf_hub") or "").strip("/").split("/")
    return ("/".join(parts[:2]), "/".join(parts[2:])) if len(parts) >= 2 else ("", "")


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - open_clip depends on it
        return "~/.cache/huggingface/hub"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _probe_address() -> tuple[str, int]:
    """Where a download would connect first: the HTTPS proxy if one is set, else the hub's host."""
    from urllib.parse import urlparse

    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    if proxy:
        u = urlparse(proxy if "://" in proxy else "http://" + proxy)
        return u.hostname or "localhost", u.port or 80
    try:
        from huggingface_hub import constants

        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    except ImportError:  # pragma: no cover
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint)
    return u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)


def _reachable(host: str, port: int, timeout: float) -> bool:
    """A name lookup and a TCP connection, each bounded by `timeout`: offline, this answers in
    seconds where the hub client would retry for ~20-46 s (a resolver with no network can hang
    too, so the lookup runs in a thread that is left behind when it does)."""
    import socket
    import threading

    found: list = []

    def lookup() -> None:
        with contextlib.suppress(OSError):
            found.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))

    t = threading.Thread(target=lookup, daemon=True)
    t.start()
    t.join(timeout)
    for family, kind, proto, _name, addr in found[:3]:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as s:
            s.settimeout(timeout)
            s.connect(addr)
            return True
    return False


def _looks_like_path(tag: str) -> bool:
    return "/" in tag or os.sep in tag or tag.endswith((".safetensors", ".bin", ".pt", ".pth", ".npz"))


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (msg[:200] + "...") if len(msg) > 200 else msg


def _image_size(model) -> int:
    size = getattr(model.visual, "image_size", 224)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size)


def _embed_dim(model, device: str, image_size: int) -> int:
    import torch

    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Parameter):
        return int(proj.shape[1])
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    with torch.inference_mode():
        return int(model.encode_image(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1])
