"""Regenerate the gRPC modules from ``oncofed.proto``.

Run from the repository root with grpcio-tools installed in a separate
environment (grpcio-tools pins a protobuf newer than Flower allows, so it is not
a project dependency)::

    python -m oncofed.wire.generate
"""

from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    proto = Path("oncofed/wire/oncofed.proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            str(proto),
        ]
    )
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
