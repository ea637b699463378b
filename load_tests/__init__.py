"""Load tests and benchmarks: the measuring behind `triage loadtest` and `triage bench`.

Nothing here starts the stack or trains: the images come from a folder or an .npz (`images`), the targets are
URLs, commands and clients the caller gives (`triage/bench.py`, `triage/scale.py` start the local stack for them);
the one child process is Locust's, which `triage loadtest` runs (`loadtest`, `locustfile.py`).
"""

from load_tests.bench import bare_onnx, cold_start, faithfulness, local_model, parameter_count, upload_to_result
from load_tests.images import LoadImage, load_images
from load_tests.loadtest import LoadResult, check_loopback, percentiles, run_load
from load_tests.report import markdown, plot_latency, targets

__all__ = ["LoadImage", "LoadResult", "bare_onnx", "check_loopback", "cold_start", "faithfulness", "load_images",
           "local_model", "markdown", "parameter_count", "percentiles", "plot_latency", "run_load", "targets",
           "upload_to_result"]
