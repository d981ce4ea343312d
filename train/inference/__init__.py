"""Answering with a trained thinker: ThinkerGenerator encodes a clip with the SED prompt, samples (MoSE experts when
the checkpoint has them, attention reallocation by flag) and is shared by preference sampling and evaluation. May
import train.core, train.data and train.mosear; no Ray.
"""
