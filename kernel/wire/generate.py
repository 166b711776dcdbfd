"""Regenerate the gRPC modules from ``oncofed.proto``.

Run from the repository root with grpcio-tools installed in a separate
environment (grpcio-tools pins a protobuf newer than Flower allows, so it is not
a project dependency)::

    python kernel/wire/generate.py

protoc names generated imports after the proto's path, so the proto is
compiled from a temporary tree laid out as the import path
(``oncofed/kernel/wire``) and the results are copied back beside it.
"""

import shutil
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
IMPORT_PATH = Path("oncofed/kernel/wire")
GENERATED = ("oncofed_pb2.py", "oncofed_pb2.pyi", "oncofed_pb2_grpc.py")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / IMPORT_PATH).mkdir(parents=True)
        shutil.copy(HERE / "oncofed.proto", root / IMPORT_PATH / "oncofed.proto")
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{root}",
                f"--python_out={root}",
                f"--pyi_out={root}",
                f"--grpc_python_out={root}",
                str(root / IMPORT_PATH / "oncofed.proto"),
            ]
        )
        if code != 0:
            raise SystemExit(code)
        for name in GENERATED:
            shutil.copy(root / IMPORT_PATH / name, HERE / name)


if __name__ == "__main__":
    main()
