"""Workers for backends whose model runs as the core's torch modules (exported through
`octavo.backend`): `TorchWorker`, its `ModelRunner` and the worker's request copies."""
