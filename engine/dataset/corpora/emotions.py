"""The one mapping from the corpora's emotion words to SABER's unified emotion label.

Every adapter writes the corpus's own label (`label`, e.g. RAVDESS "fearful", MELD "joy", MER "worried") and the
unified label (`emotion`) looked up here. The unified set is the canonical names the preference stage already uses
(train.preferences.avem_data.EMOTION_WORDS), so a clip's `emotion` and the emotion the trainer reads from a label
agree. Words are compared lower-cased and stripped.

    corpus word(s)                                   unified     corpora
    angry, anger, annoyance                          anger       RAVDESS, CREMA-D, MEAD, MELD, MER, MSP-IMPROV, MEIJU,
                                                                 MultiDialog, MEmoR (annoyance: fine-grained MEmoR)
    disgust, disgusted                               disgust     RAVDESS, CREMA-D, MEAD, MELD, MEIJU, MultiDialog, MEmoR
    fear, fearful, worried                           fear        all of the above; MER's "worried" is its fear class
    happy, happiness, joy                            happiness   all; MELD and MEmoR say "joy"
    sad, sadness                                     sadness     all
    surprise, surprised                              surprise    RAVDESS, MEAD, MELD, MER, MEIJU, MultiDialog, MEmoR
    neutral, calm                                    neutral     all; RAVDESS's "calm" is a low-arousal neutral
    contempt                                         contempt    MEAD
    anticipation, trust, serenity, interest,         (none)      MEmoR's Plutchik classes without a counterpart;
    boredom, distraction, other, no_agreement                    MSP-IMPROV's O (other) and X (no rater majority)

A word listed with (none) has no unified counterpart: the clip keeps its corpus label and gets `emotion` null. A
word missing from the table is reported by the adapter (`unmapped_labels` in the report) and also gets null;
corpora whose labels are not emotions (CH-SIMS v2's sentiment) set no emotion at all. A corpus spec may extend
the table for its own words (its `unified` section), e.g. a user corpus that says "mad" for anger.
"""

from __future__ import annotations

UNIFIED_EMOTIONS: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral", "contempt")

EMOTION_TABLE: dict[str, str | None] = {
    "angry": "anger", "anger": "anger", "annoyance": "anger",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "worried": "fear",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "sad": "sadness", "sadness": "sadness",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral", "calm": "neutral",
    "contempt": "contempt",
    **dict.fromkeys(("anticipation", "trust", "serenity", "interest", "boredom", "distraction", "other",
                     "no_agreement")),
}


class UnknownEmotionWord(KeyError):
    """A corpus label the table does not list (neither a unified emotion nor a documented no-counterpart)."""


def unified_emotion(word: str, extra: dict[str, str | None] | None = None) -> str | None:
    """The unified emotion of a corpus label word; None for a documented word without a counterpart.
    Raises UnknownEmotionWord for a word the table (and `extra`, a spec's own additions) does not know."""
    key = word.strip().lower()
    table = {**EMOTION_TABLE, **{k.strip().lower(): v for k, v in (extra or {}).items()}}
    if key not in table:
        raise UnknownEmotionWord(key)
    value = table[key]
    if value is not None and value not in UNIFIED_EMOTIONS:
        raise ValueError(f"emotion table maps {key!r} to {value!r}, not one of {UNIFIED_EMOTIONS}")
    return value
