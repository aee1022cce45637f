"""Write a copy of a GGUF file with its matrices in another type (the `gguf` package's
quantizer), metadata unchanged: the Q8_0 and BF16 files of the llama.cpp comparison are made
from the SmolLM2 Q4_1 file this way (their values are Q4_1's, their bytes per weight are not).

    python bench/requantize_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf /opt/models/smollm2-q8_0.gguf --type Q8_0
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--type", default="Q8_0", choices=["Q8_0", "Q4_0", "BF16", "F16"])
    args = p.parse_args()
    target = GGMLQuantizationType[args.type]
    reader = GGUFReader(args.src)
    arch = reader.fields["general.architecture"]
    writer = GGUFWriter(args.dst, bytes(arch.parts[arch.data[0]]).decode())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type)
        if values.ndim == 2 and values.shape[-1] % 32 == 0:
            data = quantize(values, target)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=target)
        else:
            writer.add_tensor(tensor.name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
