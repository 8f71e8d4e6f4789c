"""`torso serve`: a run's model behind an HTTP API and a page to try it in a browser.

```py
from torso.tools.serve import ServedModel, create_app, serve
app = create_app(ServedModel("runs/pets"))      # a Starlette application
serve(app, host="127.0.0.1", port=8000)         # uvicorn, until Ctrl-C
```

Modules: `model` (`ServedModel`: the run's model, PyTorch or ONNX, its metadata, its answer
to a batch), `onnx_predictor` (`OnnxPredictor`: the ONNX export through onnxruntime),
`worker` (`ModelWorker`: the model's one thread and the queue that batches requests), `app`
(the routes, limits and refusals) and `server` (listening and running uvicorn); `page.html`
is the page. The API is described in `app` and in the README ("Serving a run").
"""

from __future__ import annotations

from torso.tools.serve.app import MAX_IMAGES, MAX_UPLOAD_MB, create_app
from torso.tools.serve.model import ServedModel
from torso.tools.serve.server import address_of, listen, serve

__all__ = [
    "MAX_IMAGES",
    "MAX_UPLOAD_MB",
    "ServedModel",
    "address_of",
    "create_app",
    "listen",
    "serve",
]
