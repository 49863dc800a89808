"""Export of a fine-tuned task model (student + adapter + head) for deployment; see :mod:`alad.export.onnx`."""

from alad.export.onnx import (
    EXPORT_FILE,
    EXPORT_KIND,
    EXPORT_VERSION,
    OnnxTaskModel,
    export_onnx,
    is_export_folder,
    load_for_inference,
)

__all__ = [
    "EXPORT_FILE",
    "EXPORT_KIND",
    "EXPORT_VERSION",
    "OnnxTaskModel",
    "export_onnx",
    "is_export_folder",
    "load_for_inference",
]
