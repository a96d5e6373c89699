"""What crosses the disk and the wire between cloud and edge, named once.

Both apps import these names; neither spells the literals itself (``tests/test_architecture.py`` greps
``cloud/`` and ``edge/`` for them). The gRPC messages themselves are in ``protos/cosmo/v1``; the
manifest's fields and its file-path rule in ``shared.manifest``.

A registry version is a folder of files listed in its ``manifest.json``, each with a ``kind``:

* stage 1 (kind of manifest: none, a classifier's encoders): ``encoders.pt`` (the encoder bundle,
  ``state_dict``), ``stage1_config.yaml`` (``config``), ``encoder_<modality>.onnx`` (``onnx``, one per
  modality, input ``x``, output ``h``);
* a fine-tuned model on the edge adds ``finetuned.pt`` (``state_dict``) and ``model.onnx`` (``onnx``:
  one input per modality plus the ``present`` mask, outputs ``logits``, ``beta``, ``embedding``);
* an aligned model (manifest ``kind: "aligned"``): ``aligned_imu.onnx`` (input ``imu``, output
  ``embedding``), ``aligned_imu.pt``, ``class_prompts.npy`` and the text encoder's files.
"""

MANIFEST = "manifest.json"
METRICS = "metrics.json"

# stage 1
ENCODERS = "encoders.pt"
STAGE1_CONFIG = "stage1_config.yaml"
QUALITY = "quality.json"
ENCODER_ONNX = "encoder_{}.onnx"  # .format(modality)
ENCODER_INPUT, ENCODER_OUTPUT = "x", "h"

# stage 2 (the edge's fine-tuned classifier)
FINETUNED = "finetuned.pt"
MODEL_ONNX = "model.onnx"
PRESENT = "present"  # the model's input mask [N, M]: which modalities are present in each window
MODEL_OUTPUTS = ("logits", "beta", "embedding")

# the aligned (IMU <-> text) model
ALIGNED_KIND = "aligned"
ALIGNED_PT = "aligned_imu.pt"
ALIGNED_ONNX = "aligned_imu.onnx"
ALIGNED_INPUT, ALIGNED_OUTPUT = "imu", "embedding"
PROMPTS = "class_prompts.npy"

# file kinds in a manifest's "files"
KIND_STATE_DICT, KIND_ONNX, KIND_CONFIG = "state_dict", "onnx", "config"

__all__ = ["ALIGNED_INPUT", "ALIGNED_KIND", "ALIGNED_ONNX", "ALIGNED_OUTPUT", "ALIGNED_PT", "ENCODERS",
           "ENCODER_INPUT", "ENCODER_ONNX", "ENCODER_OUTPUT", "FINETUNED", "KIND_CONFIG", "KIND_ONNX",
           "KIND_STATE_DICT", "MANIFEST", "METRICS", "MODEL_ONNX", "MODEL_OUTPUTS", "PRESENT", "PROMPTS",
           "QUALITY", "STAGE1_CONFIG"]
