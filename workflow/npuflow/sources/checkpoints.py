"""Loading checkpoints without executing code from them.

A state dict comes from safetensors or torch's weights-only unpickler. A pickled *module* (an
Ultralytics `.pt`: the whole model object, not its state dict) is read by the same weights-only
unpickler with every class it names replaced by an inert stand-in that only records the state
pickle gives it: no class of the checkpoint's (nor of Ultralytics) is ever instantiated or run,
and the tensors are collected from the recorded `_parameters`/`_buffers` of the module tree. A
checkpoint naming anything outside the allow-list (os.system, builtins.eval, …) is refused
before unpickling starts, naming the file and the global."""

from __future__ import annotations

from pathlib import Path

from npuflow.util.errors import NpuflowError


class CheckpointError(NpuflowError):
    """A checkpoint that cannot be loaded as weights only; the message names the file and why."""


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length and a JSON header: a URL's file name need
    not say which format it serves."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def load_failure(e: Exception) -> str:
    """The part of a loader's error that says why: torch's weights-only refusal is a page of
    advice to load with weights_only=False, which npuflow never does."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    code = next((line for line in lines if "GLOBAL" in line), None)
    if code:
        return f"it would import and run code ({code}); npuflow never runs code from a checkpoint"
    if lines and lines[0].startswith("Weights only load failed"):
        why = next((line for line in lines if line.startswith("Unsupported")), lines[-1])
        return f"truncated, corrupt, not a weights file, or holding more than tensors (the weights-only unpickler says: {why})"
    return f"truncated, corrupt or not a weights file ({type(e).__name__}: {lines[0][:200] if lines else 'file ended early'})"


def load_state_dict_file(path: Path, key: str | None, where: str) -> dict:
    """Load a checkpoint without executing code from it (safetensors or weights-only pickle)."""
    import torch

    safetensors = path.suffix == ".safetensors" or _looks_like_safetensors(path)
    try:
        if safetensors:
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # each loader has its own error types for a bad file
        kind = "safetensors file" if safetensors else "weights-only checkpoint"
        raise CheckpointError(f"{where}.source: {path} is not a loadable {kind}: {load_failure(e)}") from e
    if key:
        if not isinstance(obj, dict) or key not in obj:
            keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{where}.state_dict_key: no key {key!r} in the checkpoint (top-level keys: {keys})")
        obj = obj[key]
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise CheckpointError(f"{where}: {path} is not a state dict of tensors (set state_dict_key?)")
    return obj


class Inert:
    """Stands in for a class a pickled checkpoint names: accepts any arguments, records the state
    pickle sets, and does nothing else. `qualname` is the name it stands for."""

    qualname = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def __repr__(self):
        return f"<inert {self.qualname}>"


def _stand_in(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (Inert,), {"qualname": qualname})


def load_module_pickle(path: Path, allowed_prefixes: tuple[str, ...], where: str) -> dict:
    """The objects of a pickled-module checkpoint (e.g. {'model': <inert DetectionModel>, …}),
    read without running code: globals under `allowed_prefixes` become inert stand-ins, any other
    global is refused before unpickling. Tensors are real tensors (torch's own rebuild functions)."""
    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # not a torch zip checkpoint (truncated, text, legacy format)
        raise CheckpointError(f"{where}: {path} is not a loadable checkpoint: {load_failure(e)}") from e
    refused = sorted(g for g in unsafe if not g.startswith(allowed_prefixes))
    if refused:
        raise CheckpointError(
            f"{where}: {path} names {', '.join(refused[:5])}{' …' if len(refused) > 5 else ''}, which would import and run code; "
            "refused (npuflow never runs code from a checkpoint)"
        )
    stand_ins = [(_stand_in(name), name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{where}: {path} is not a loadable checkpoint: {load_failure(e)}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: {path} holds a {type(obj).__name__}, expected a dict with a `model` entry")
    return obj


def module_state_dict(module: Inert, where: str) -> dict:
    """The state dict of an inert module tree, as `torch.nn.Module.state_dict()` would give it:
    parameters and persistent buffers, keys joined by '.'."""
    out: dict = {}

    def walk(node, prefix: str) -> None:
        state = node._state if isinstance(node, Inert) else None
        if not isinstance(state, dict) or "_modules" not in state:
            raise CheckpointError(f"{where}: {prefix.rstrip('.') or 'the model'} is not a pickled torch module")
        skip = state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, tensor in (state.get(kind) or {}).items():
                if tensor is not None and not (kind == "_buffers" and name in skip):
                    out[prefix + name] = tensor.detach() if hasattr(tensor, "detach") else tensor
        for name, child in (state.get("_modules") or {}).items():
            if child is not None:
                walk(child, f"{prefix}{name}.")

    walk(module, "")
    return out
