"""Word lists for needle keys (``adjective-noun``, as RULER's word keys) and filler sentences, written
out here (no download). Every entry is one lowercase word of letters; the three lists are disjoint, so
a key or a filler sentence never reads two ways.
"""

from __future__ import annotations

ADJECTIVES: tuple[str, ...] = (
    "able", "ancient", "angry", "anxious", "awful", "bitter", "black", "blue", "bold", "brave", "brief",
    "bright", "broad", "broken", "busy", "calm", "careful", "cheap", "cheerful", "clean", "clever",
    "cold", "cool", "crazy", "curious", "damp", "dark", "deep", "eager", "early", "easy", "elegant",
    "empty", "fair", "faithful", "famous", "fancy", "fast", "fearless", "fierce", "flat", "fluffy",
    "foolish", "fresh", "friendly", "funny", "gentle", "giant", "glad", "golden", "grand", "gray",
    "great", "green", "grumpy", "happy", "hard", "heavy", "helpful", "hollow", "honest", "huge",
    "humble", "hungry", "icy", "idle", "jolly", "juicy", "kind", "large", "late", "lazy", "little",
    "lively", "lonely", "loud", "lucky", "mellow", "messy", "mighty", "modern", "narrow", "neat",
    "nervous", "nimble", "noisy", "odd", "old", "orange", "pale", "patient", "plain", "polite", "proud",
    "purple", "quick", "quiet", "rapid", "rare", "red", "rich", "rough", "round", "royal", "rusty",
    "sad", "salty", "shallow", "sharp", "shiny", "short", "shy", "silent", "silly", "simple", "sleepy",
    "slim", "slow", "small", "smooth", "soft", "solid", "sour", "spicy", "steady", "steep", "sticky",
    "strange", "strict", "strong", "sturdy", "sudden", "sweet", "swift", "tall", "tame", "tender",
    "thick", "thin", "tidy", "tiny", "tired", "tough", "upset", "vast", "violet", "warm", "weak",
    "wealthy", "wet", "white", "wide", "wild", "wise", "witty", "wooden", "yellow", "young", "zealous",
)

NOUNS: tuple[str, ...] = (
    "anchor", "apple", "arrow", "badge", "bakery", "balloon", "banjo", "barn", "basket", "beacon",
    "bicycle", "blanket", "bottle", "bridge", "bucket", "butter", "cabin", "camera", "candle", "canyon",
    "carpet", "castle", "cellar", "chair", "cherry", "chimney", "circus", "cloud", "compass", "cookie",
    "cottage", "crayon", "cricket", "crown", "cupboard", "curtain", "desert", "diamond", "dolphin",
    "donkey", "dragon", "drum", "eagle", "engine", "falcon", "feather", "fence", "ferry", "fiddle",
    "forest", "fountain", "garden", "garlic", "giraffe", "glacier", "goblet", "guitar", "hammer",
    "harbor", "helmet", "hive", "horizon", "island", "jacket", "jungle", "kettle", "kitten", "ladder",
    "lantern", "lemon", "library", "lizard", "magnet", "mango", "marble", "meadow", "mirror", "monkey",
    "mountain", "muffin", "needle", "notebook", "ocean", "orchard", "ottoman", "oyster", "paddle",
    "palace", "panther", "parrot", "pebble", "pencil", "pepper", "piano", "pillow", "planet", "pocket",
    "pony", "potato", "puzzle", "rabbit", "radio", "raven", "ribbon", "river", "rocket", "saddle",
    "sailor", "salmon", "sandal", "scarf", "shadow", "shovel", "silver", "spider", "spoon", "squirrel",
    "statue", "stove", "summit", "sunset", "teapot", "temple", "thimble", "throne", "tiger", "tomato",
    "tower", "trumpet", "tulip", "tunnel", "turtle", "umbrella", "valley", "velvet", "violin", "wagon",
    "walnut", "whistle", "window", "wizard", "yogurt", "zebra",
)

VERBS: tuple[str, ...] = (
    "admired", "avoided", "borrowed", "built", "carried", "chased", "cleaned", "copied", "counted",
    "covered", "crossed", "described", "drew", "dropped", "followed", "found", "guarded", "helped",
    "hid", "kept", "lifted", "liked", "moved", "noticed", "opened", "painted", "passed", "pulled",
    "pushed", "reached", "repaired", "saw", "shared", "showed", "sold", "studied", "touched", "visited",
    "washed", "watched",
)
