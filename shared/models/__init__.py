"""Encoders (registry), projection heads and the Cosmo classifier."""
from .classifier import CosmoClassifier, CosmoModel, QualityGuidedAttention
from .encoders import (Conv1dEncoder, Conv1dEncoderConfig, Conv3dEncoder, Conv3dEncoderConfig, build_encoder,
                       encoder_config, encoder_spec, list_encoders, register_encoder)
from .heads import ProjectionHead
from .mw2 import MW2Encoder, MW2EncoderConfig, ProjectionToText, mw2_min_window, mw2_out_len

__all__ = ["CosmoClassifier", "CosmoModel", "QualityGuidedAttention", "Conv1dEncoder", "Conv1dEncoderConfig",
           "Conv3dEncoder", "Conv3dEncoderConfig", "build_encoder", "encoder_config", "encoder_spec",
           "list_encoders", "register_encoder", "ProjectionHead", "MW2Encoder", "MW2EncoderConfig",
           "ProjectionToText", "mw2_min_window", "mw2_out_len"]
