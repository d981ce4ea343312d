"""The tiny tokenizers' training text and the byte-level BPE trained on it (as Qwen's tokenizer is byte-level:
any UTF-8 text encodes, nothing is ever <unk>). engine.devkit.tiny_models and engine.devkit.tiny_vl add the special
tokens and chat templates of the models they build.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Hand-written sentences in the register of SABER annotations, plus the SED section headings, so the
# BPE learns merges for the words the trainer actually feeds it.
_SENTENCES = """\
Visual evidence
Acoustic evidence
Reasoning
The woman smiles warmly while her voice trembles with quiet joy.
A young man frowns and crosses his arms as he speaks in a flat, low tone.
Her eyes widen and her eyebrows rise; she gasps in surprise.
He clenches his jaw and his voice grows loud and sharp with anger.
The speaker's shoulders slump and she sighs before each sentence.
Tears run down his cheeks and his voice breaks on the last word.
She laughs out loud, claps her hands and leans toward the camera.
A tense silence follows; then he whispers that he is afraid.
The lighting is dim and the room is small, with a window behind her.
Background music is soft and slow, and a door closes somewhere off screen.
His speech is fast, the pitch is high, and the volume rises at the end.
The facial expression shows a slight smile that does not reach the eyes.
Her words are polite, but the tone is cold and the pauses are long.
The visual cues suggest calm, yet the acoustic cues reveal nervous tension.
Because the face and the voice agree, the emotion is most likely happiness.
Because the voice contradicts the smile, the emotion is most likely sarcasm.
The audio contains crying sounds, so sadness is the most plausible emotion.
He nods slowly, looks down, and speaks with a soft, hesitant voice.
She points at the other person and shouts, her face red with frustration.
The child giggles and bounces in the chair, full of excitement.
An old man rubs his forehead and speaks in a tired, weary voice.
The scene is a busy street at night, with traffic noise and bright signs.
A kitchen in the morning: sunlight, steam from a cup, and a quiet conversation.
The speaker stutters, swallows hard, and avoids eye contact.
Her voice is steady and warm, and she maintains eye contact throughout.
The sudden change in pitch signals shock rather than fear.
Low energy, long pauses and a falling intonation point to sadness.
Raised eyebrows and an open mouth, with a sharp intake of breath, indicate surprise.
A wrinkled nose and a curled upper lip express disgust.
Fast speech, a trembling voice and wide eyes together indicate fear.
A relaxed posture, a gentle smile and a bright tone express contentment.
The emotion is neutral: the face is still and the voice is even.
The emotional intensity is high, about eight on a scale from zero to ten.
The emotional intensity is low, about two on a scale from zero to ten.
""".splitlines()


_SUBJECTS = ["The woman", "The man", "The girl", "The boy", "The teacher", "The old lady", "The doctor", "The singer"]


_FACES = [
    "smiles broadly",
    "frowns deeply",
    "raises both eyebrows",
    "stares blankly",
    "bites her lip",
    "rolls his eyes",
    "covers the mouth with a hand",
    "blinks rapidly",
]


_VOICES = [
    "speaks in a cheerful, bright voice",
    "answers in a quiet, shaking voice",
    "shouts with a harsh, rising pitch",
    "murmurs slowly with long pauses",
    "laughs nervously between words",
    "sighs and lowers the volume",
]


_EMOTIONS = ["happy", "sad", "angry", "surprised", "afraid", "disgusted", "neutral", "worried", "excited", "calm"]



def _corpus() -> list[str]:
    """A few hundred short sentences: the hand-written ones plus systematic face/voice/emotion combinations."""
    combos = [
        f"{subject} {face} and {voice}; the person seems {emotion}."
        for (subject, face, voice), emotion in zip(
            itertools.product(_SUBJECTS, _FACES, _VOICES), itertools.cycle(_EMOTIONS)
        )
    ]
    return [line for line in _SENTENCES if line] + combos



def train_bpe(num_merged_tokens: int) -> Tokenizer:
    # Byte-level like Qwen's tokenizer: any UTF-8 text encodes, nothing is ever <unk>.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=num_merged_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer
