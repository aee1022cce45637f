"""A FAKE of AWS's NxD Inference (`neuronx-distributed-inference`), for tests on the CPU.

The real SDK installs only from AWS's own package index and runs only on Neuron devices, so
octavo-neuron's tests put this package on `sys.path` in its place. It defines exactly the
modules, classes, methods and keyword arguments octavo-neuron uses, with the signatures AWS
documents (NxD Inference API reference; the `vllm-neuron` plugin drives the same calls),
and nothing else: a backend that reaches for anything more fails here.

What it does instead of compiling for Neuron: `compile` writes the config and the bucket
list to disk, `load` loads the Hugging Face model as the reference on the CPU with a paged
KV cache of `pa_num_blocks` x `pa_block_size` slots per layer, and `forward` picks the
context-encoding or token-generation bucket, pads and checks the inputs as NxDI does, runs
the real tokens through the reference model reading and writing the cache through the block
table and slot mapping, and samples on the "device" when the config asks for it.
"""

__version__ = "0.0.0+octavo.fake"
