"""Regenerate the Python modules for grpc_predict_v2.proto (needs grpcio-tools, a dev-only tool):

    .venv/bin/pip install -c constraints/cpu.txt grpcio-tools
    .venv/bin/python -m service.grpc.generate

protoc writes grpc_predict_v2_pb2.py(i) and grpc_predict_v2_pb2_grpc.py beside the proto; then the message
module is moved from protobuf's default descriptor pool to a pool of its own. Why: Triton's client
(tritonclient.grpc) registers the same `inference.*` message names from its own file in the default pool,
and protobuf refuses a second file defining them, so a process holding both (our tests, any tool that embeds
Stride next to a Triton client) could not import one of them. The wire format does not depend on the pool.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROTO = HERE / "grpc_predict_v2.proto"
MESSAGES = HERE / "grpc_predict_v2_pb2.py"
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = ("# Stride: a pool of our own, not Default(): see service/grpc/generate.py.\n"
                "_POOL = _descriptor_pool.DescriptorPool()\n"
                "DESCRIPTOR = _POOL.AddSerializedFile(")


def main() -> None:
    relative = PROTO.relative_to(REPO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO}", f"--python_out={REPO}",
                    f"--pyi_out={REPO}", f"--grpc_python_out={REPO}", str(relative)], check=True, cwd=REPO)
    text = MESSAGES.read_text()
    if DEFAULT_POOL not in text:
        raise SystemExit(f"{MESSAGES.name}: protoc's output changed; update service/grpc/generate.py")
    MESSAGES.write_text(text.replace(DEFAULT_POOL, PRIVATE_POOL))


if __name__ == "__main__":
    main()
