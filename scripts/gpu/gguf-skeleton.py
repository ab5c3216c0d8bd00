#!/usr/bin/env python3
"""A real model's shape without its weights, for machines its file cannot reach.

  gguf-skeleton.py head MODEL.gguf OUT.head   # metadata and tensor table only
  gguf-skeleton.py fill IN.head OUT.gguf      # the same file, random weights

`fill` writes valid blocks of each tensor's type: random quants with small
finite f16 scales, norm vectors near 1. Outputs are nonsense text, but every
kernel runs on the real shapes, types and tokenizer, so the GPU checks and
speeds hold for the real file. Needs numpy for `fill`.
"""
import struct
import sys

# ggml type -> (values per block, bytes per block, offsets of f16 scales)
TYPES = {
    0: (1, 4, None), 1: (1, 2, None), 30: (1, 2, None),
    2: (32, 18, [0]), 3: (32, 20, [0, 2]), 6: (32, 22, [0]), 7: (32, 24, [0, 2]), 8: (32, 34, [0]),
    10: (256, 84, [80, 82]), 11: (256, 110, [108]), 12: (256, 144, [0, 2]),
    13: (256, 176, [0, 2]), 14: (256, 210, [208]),
}
SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class Reader:
    def __init__(self, f):
        self.f = f

    def take(self, fmt):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.f.read(size))

    def string(self):
        (n,) = self.take("Q")
        return self.f.read(n).decode("utf-8", "replace")

    def skip_value(self, ty):
        if ty == 8:
            self.string()
        elif ty == 9:
            inner, n = self.take("IQ")
            if inner in SCALARS:
                self.f.seek(SCALARS[inner] * n, 1)
            else:
                for _ in range(n):
                    self.skip_value(inner)
        else:
            self.f.seek(SCALARS[ty], 1)


def parse(f):
    r = Reader(f)
    magic, version, n_tensors, n_kv = r.take("4sIQQ")
    assert magic == b"GGUF" and version >= 2, "not a GGUF v2+ file"
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        (ty,) = r.take("I")
        if key == "general.alignment":
            (alignment,) = r.take("I")
        else:
            r.skip_value(ty)
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        (n_dims,) = r.take("I")
        dims = r.take("Q" * n_dims)
        ty, offset = r.take("IQ")
        tensors.append((name, dims, ty, offset))
    data_start = -(-f.tell() // alignment) * alignment
    return data_start, tensors


def read_header(path):
    """The bytes before the tensor data, and the tensor table."""
    with open(path, "rb") as f:
        data_start, tensors = parse(f)
        f.seek(0)
        return f.read(data_start), tensors


def head(model, out):
    header, _ = read_header(model)
    with open(out, "wb") as o:
        o.write(header)


def fill(head_path, out):
    import numpy as np

    rng = np.random.default_rng(7)
    header, tensors = read_header(head_path)
    with open(out, "wb") as o:
        o.write(header)
        at = 0
        for name, dims, ty, offset in sorted(tensors, key=lambda t: t[3]):
            per_block, block_bytes, scales = TYPES[ty]
            count = int(np.prod(dims))
            blocks = count // per_block
            o.write(b"\0" * (offset - at))
            if scales is None:
                if ty == 0 and len(dims) == 1:
                    values = rng.uniform(0.8, 1.2, count).astype(np.float32)
                else:
                    values = rng.normal(0.0, 0.02, count).astype(np.float32)
                if ty == 1:
                    values = values.astype(np.float16)
                elif ty == 30:
                    values = (values.view(np.uint32) >> 16).astype(np.uint16)
                data = values.tobytes()
            else:
                raw = rng.integers(0, 256, (blocks, block_bytes), dtype=np.uint8)
                for i, off in enumerate(scales):
                    lo, hi = (0.002, 0.006) if i == 0 else (-0.006, -0.002) if per_block == 32 else (0.0005, 0.002)
                    d = rng.uniform(lo, hi, blocks).astype(np.float16)
                    raw[:, off:off + 2] = d.view(np.uint8).reshape(blocks, 2)
                data = raw.tobytes()
            o.write(data)
            at = offset + len(data)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("head", "fill"):
        sys.exit(__doc__)
    (head if sys.argv[1] == "head" else fill)(sys.argv[2], sys.argv[3])
