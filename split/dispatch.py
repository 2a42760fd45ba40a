"""The `splitedge` command: maps each subcommand to a package's own `cli` module by name.

Importing by name (not by statement) keeps the import rules of DESIGN.md: `split` does not
depend on the server, the client or the simulators that sit above it, and a subcommand
only pays for the imports it needs.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "EXTRA_OF", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("split.cli", "list the model recipes (first column: name; first line: the default)"),
    "serve": ("edge_server.cli", "run the edge gRPC server"),
    "run": ("mobile_client.cli", "run the device client over images, a video or a camera"),
    "finetune": ("split.train.cli", "fine-tune a detector recipe on COCO-format data (supervised)"),
    "train": ("split.train.cli", "distil a bottleneck (HND/GHND) from a YAML recipe"),
    "eval": ("split.train.cli", "accuracy of split vs original vs JPEG offload, with bytes"),
    "rd": ("split.train.cli", "rate-accuracy curve: checkpoints vs JPEG and WebP offload, bytes of whole frames"),
    "prefilter": ("split.train.cli", "train the prefilter (drops frames with nothing of interest) into a checkpoint"),
    "profile": ("split.cli", "measure model latencies on this machine into a JSON profile"),
    "export": ("split.cli", "export a recipe's device and edge halves as ONNX, with a manifest"),
    "simulate": ("simulators.cli", "trace-driven simulation of local/split/offload/auto policies"),
    "emulate": ("simulators.cli", "user-space link emulator: a shaping TCP proxy"),
    "fleet": ("simulators.cli", "N devices on one edge: e2e against N, its knee with/without edge-load feedback"),
}

# What a command may miss on a lean install, and the extra that brings it (pyproject.toml).
# `splitedge run` reads it too, for what a runtime misses (torch's, or onnxruntime).
EXTRA_OF = {"torch": "edge", "torchvision": "edge", "compressai": "edge", "prometheus_client": "edge",
            "onnxruntime": "client", "pycocotools": "train", "matplotlib": "train", "aiortc": "web", "aiohttp": "web"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: splitedge COMMAND [options]\n\ncommands:\n{rows}\n\n`splitedge COMMAND --help` for a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"splitedge: error: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from split.numerics import flush_denormals

    flush_denormals()  # every splitedge process computes with denormals flushed (split/numerics.py)
    try:
        module = importlib.import_module(COMMANDS[command][0])
    except ModuleNotFoundError as exc:  # a lean install (`splitedge[client]`) has no torch: say which extra
        if exc.name not in EXTRA_OF:
            raise
        print(f"splitedge {command}: error: needs {exc.name}, which is not installed: pip install "
              f"'splitedge[{EXTRA_OF[exc.name]}]' (docs/lean-client.md)", file=sys.stderr)
        return 2
    return int(module.main(command, rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
