"""HuggingFace GPT-2 checkpoints -> an archive pg_llm_import_npz reads.

A checkpoint directory holds config.json and model.safetensors (or
pytorch_model.bin).  Tensors keep HuggingFace names and shapes; Conv1D
weights are (in, out) as HuggingFace stores them (pg_llm_import_npz
transposes them to its (out, in) layout).  Every shape is asserted against
config.json; the causal-mask buffers and the tied lm_head are left out.
"""
from __future__ import annotations

import json
import os

import numpy as np

from pg_llm_cy.gpt2 import GPT2Config, IGNORED, hf_shape, param_names, strip_prefix


def config_from_hf(path: str) -> GPT2Config:
    with open(os.path.join(path, "config.json")) as f:
        c = json.load(f)
    return GPT2Config(n_layer=int(c["n_layer"]), n_head=int(c["n_head"]), n_embd=int(c["n_embd"]),
                      n_positions=int(c.get("n_positions", c.get("n_ctx", 1024))),
                      vocab=int(c["vocab_size"]), eps=float(c.get("layer_norm_epsilon", 1e-5)))


def read_safetensors(path: str) -> dict:
    """name -> float32 array, with pg_llm's own bounds-checked header parser."""
    from pg_llm_cy._kernels import safetensors_parse
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    if not 0 < n <= len(data) - 8:
        raise ValueError(f"{path}: not a safetensors file")
    base = 8 + n
    out = {}
    for name, is_f32, shape, begin, end in safetensors_parse(data[8:base]):
        raw = data[base + begin: base + end]
        if not is_f32:
            raise ValueError(f"{path}: tensor {name} is not F32 (convert it to float32 first)")
        out[name] = np.frombuffer(raw, dtype="<f4").reshape(shape)
    return out


def read_pytorch_bin(path: str) -> dict:
    import torch   # only for the legacy pickle format
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in sd.items()}


def resolve_source(src: str) -> str:
    """A local directory, or a HuggingFace hub name fetched when online."""
    if os.path.isdir(src):
        return src
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise SystemExit(f"{src} is not a directory, and huggingface_hub is not installed "
                         f"to fetch it from the hub") from e
    return snapshot_download(src, allow_patterns=["config.json", "*.safetensors", "*.bin"])


def load_checkpoint(path: str):
    cfg = config_from_hf(path)
    st = os.path.join(path, "model.safetensors")
    binf = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        tensors = read_safetensors(st)
    elif os.path.exists(binf):
        tensors = read_pytorch_bin(binf)
    else:
        raise SystemExit(f"{path}: neither model.safetensors nor pytorch_model.bin")
    tensors = {strip_prefix(k): np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    out = {}
    for name in param_names(cfg):
        assert name in tensors, f"checkpoint lacks {name}"
        arr = tensors.pop(name)
        assert arr.shape == hf_shape(cfg, name), f"{name}: {arr.shape} != {hf_shape(cfg, name)}"
        assert np.all(np.isfinite(arr)), f"{name} holds NaN or Inf"
        out[name] = np.ascontiguousarray(arr)
    lm = tensors.pop("lm_head.weight", None)
    if lm is not None:
        assert np.array_equal(lm, out["wte.weight"]), "lm_head.weight is not tied to wte.weight"
    leftover = [k for k in tensors if not IGNORED.match(k)]
    assert not leftover, f"unexpected tensors: {leftover[:5]}"
    return cfg, out


def write_archive(tensors: dict, out_path: str) -> None:
    if out_path.endswith(".safetensors"):
        write_safetensors(tensors, out_path)
    else:
        np.savez(out_path, **tensors)


def write_safetensors(tensors: dict, out_path: str) -> None:
    header, offset = {}, 0
    names = sorted(tensors)
    for name in names:
        n = tensors[name].nbytes
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(out_path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def convert(src: str, out_path: str) -> GPT2Config:
    cfg, tensors = load_checkpoint(resolve_source(src))
    write_archive(tensors, out_path)
    return cfg
