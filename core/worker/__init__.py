from octavo.worker.torch_worker import TorchWorker

__all__ = ["TorchWorker"]
