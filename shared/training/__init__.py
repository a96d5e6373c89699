"""Training loops: stage 1 (contrastive fusion pretraining) and stage 2 (iterative fine-tuning)."""
from .common import pick_device, seed_everything
from ..config import config_from_dict, load_config
from ..metrics import accuracy_f1
from .stage1 import Stage1Config, Stage1Model, build_encoders, load_encoder_bundle, pretrain
from .stage2 import Stage2Config, accuracy_without, build_model, evaluate, finetune, phase_of, predict

__all__ = ["accuracy_f1", "config_from_dict", "load_config", "pick_device", "seed_everything",
           "Stage1Config", "Stage1Model", "build_encoders", "load_encoder_bundle", "pretrain",
           "Stage2Config", "accuracy_without", "build_model", "evaluate", "finetune", "phase_of", "predict"]
