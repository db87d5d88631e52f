"""Inference: everything that runs a trained model, below the commands and the server.

- `loader`: the one loader (`load(ref, device, dtype)`), over `checkpoint` and the store;
- `precision`: the dtype policy (what `auto` means, int8's activations, which packing);
- `packing`: weights packed for the fastest kernel of their dtype;
- `text`: tokens -> text, never splitting a character nor showing a stop string;
- `sequence`: the per-token policy (`Sequence`, `sample_rows`), shared by the two below;
- `generate`: one prompt, one or more samples, through the KV cache (and the native step);
- `batching`: the continuous-batching engine `gpt serve` runs;
- `api`: the Python API, `gptcli.load()` -> `Model`.

The native CPU step (`gptcli.kernels`) is called from `generate` and `batching`.
"""
