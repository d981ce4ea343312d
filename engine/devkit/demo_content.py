"""What the demo clips say and look like: the sentences per expression, the sound-event tags an annotation may
carry, the espeak-ng voices, the backgrounds and the mood words of the sidecar annotations. Plain data;
engine.devkit.demo_data plans and renders the set from it.
"""

from __future__ import annotations

# Plain words: no digits, abbreviations or British spellings (Whisper writes digits and US spellings).
# Picked from a larger pool as the sentences Whisper tiny.en transcribes best across the voices below.
SENTENCES: dict[str, tuple[str, ...]] = {
    "happy": (
        "My sister just told me she is having a baby",
        "I am so proud of you for finishing the race",
        "We won the game and everyone was cheering for us",
        "We finally bought a house with a big garden",
        "Look at this little puppy, he is so adorable",
        "Thank you so much, this made my whole day",
        "We finally made it to the beach and the water is perfect",
        "I passed my driving test on the very first try",
        "I love the way you laugh when you are excited",
        "This is the most beautiful present I have ever received",
    ),
    "sad": (
        "I can't believe you forgot my birthday again",
        "I feel so lonely since my best friend moved away",
        "Nobody came to my party and I waited all evening",
        "I tried so hard but it still was not enough",
        "We used to be so close and now we never talk",
        "I waited by the phone but he never called back",
        "My little brother cried himself to sleep again tonight",
        "I miss the old house where we grew up",
        "The house feels so empty now that everyone is gone",
        "She left without saying goodbye to anyone",
    ),
    "angry": (
        "Get out of my room and leave me alone",
        "Stop lying to me, I know exactly what you did",
        "How many times do I have to tell you to stop",
        "I am tired of you blaming me for everything",
        "Stop interrupting me every time I try to explain something",
        "You promised me you would be here and you lied",
        "Why would you read my private messages without asking",
        "Do you have any idea how long I waited for you",
        "Somebody crashed into my car and then drove away",
        "I am sick of cleaning up after everyone in this house",
    ),
    "surprised": (
        "You cut your hair, it looks completely different",
        "What a surprise, I did not know you were coming",
        "You painted the entire kitchen by yourself in one day",
        "Oh my goodness, what are you doing here tonight",
        "The lights suddenly went out in the middle of the concert",
        "The whole street was covered in snow this morning",
        "You knew about this the whole time and never told me",
        "I cannot believe the old bridge is finally open again",
        "Wait, is that really your brother on television",
        "I never expected to see my old teacher at the market",
    ),
    "fearful": (
        "The river is rising fast and we cannot find the children",
        "Someone has been following me all the way home",
        "My hands are shaking and I can barely breathe",
        "Something is scratching at the door, please do not open it",
        "Please tell me the storm is going to pass soon",
        "Please do not leave me alone in this dark forest",
        "I think somebody is standing outside the bedroom window",
        "What if the bridge collapses while we are crossing it",
        "There is a strange man waiting at the end of the road",
        "Did you hear that noise coming from the basement",
    ),
    "neutral": (
        "Please remember to close the window before you leave",
        "Turn left at the corner and the bakery is on your right",
        "He is painting the fence behind the house this afternoon",
        "The meeting has been moved to the small room upstairs",
        "The soup needs a little more salt and pepper",
        "She always drinks her coffee before reading the morning news",
        "I usually walk to the office when the weather is good",
        "I will send you the report later this evening",
        "We usually have lunch together in the kitchen",
        "The library closes early during the summer holidays",
    ),
}


TAGS = {
    "happy": ("<laughs>", "<giggles>"),
    "sad": ("<sigh>", "<sniffs>"),
    "angry": ("<scoffs>", "<sighs heavily>"),
    "surprised": ("<gasps>", "<laughs>"),
    "fearful": ("<gasps>", "<whimpers>"),
    "neutral": ("<clears throat>", "<coughs>"),
}


# espeak-ng voices (+fN/+mN variants) on which Whisper tiny.en stayed under 0.5 WER with a 30 ms word gap.
VOICES = ("en-us", "en-us+f2", "en-us+f3", "en-us+m1", "en-us+m2", "en-gb-x-rp", "en-gb-x-rp+m1")


BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "blue": (70, 110, 160),
    "green": (80, 140, 90),
    "grey": (120, 120, 125),
    "purple": (120, 90, 150),
    "teal": (60, 140, 140),
    "orange": (200, 130, 60),
    "maroon": (130, 50, 60),
    "olive": (130, 130, 60),
}


# Per expression: (tone of the delivery, sentiment polarity, the emotion it points to).
MOODS = {
    "happy": ("bright and lively", "positive", "joy"),
    "sad": ("subdued and heavy", "negative", "sadness"),
    "angry": ("sharp and tense", "negative", "anger"),
    "surprised": ("animated and rising", "mixed", "surprise"),
    "fearful": ("tense and hurried", "negative", "fear"),
    "neutral": ("even and matter-of-fact", "neutral", "calm"),
}
