"""The simulated assistant's world: intents, catalogues, phrasings, confusions.

Everything here is static data plus tables derived from it once (at first use):
the template table (every phrasing and its ASR-corrupted variants), the mention
table (every way an entity can reach NLU: its name, aliases, mishearings), the
NLU keyword cues read off each template's *text*, and the fuzzy-match scores of
every mention against every catalogue entry (the ER and NLU gazetteers). The
engine (:mod:`fpi.simulate.engine`) then works on integer ids into these tables, so
the per-turn work is numpy, not Python string handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from rapidfuzz import fuzz
from rapidfuzz.process import cdist

from fpi.simulate import lang_de, lang_es, lang_ja
from fpi.simulate.language import EntityRow, Language

# ---------------------------------------------------------------------------
# Devices, locales, acoustic environments
# ---------------------------------------------------------------------------

DEVICE_TYPES: tuple[str, ...] = ("speaker", "screen", "phone", "car", "tv")
DEVICE_HAS_SCREEN = np.array([False, True, True, True, True])
#: Share of sessions per device type.
DEVICE_WEIGHTS = np.array([0.36, 0.18, 0.22, 0.10, 0.14])
#: How far the microphone is from the user (0 near .. 1 far): drives ASR difficulty.
DEVICE_FARFIELD = np.array([0.8, 0.6, 0.05, 0.35, 0.9])

LOCALES: tuple[str, ...] = ("en-US", "en-GB", "en-IN", "en-AU")
LOCALE_WEIGHTS = np.array([0.62, 0.18, 0.12, 0.08])
#: Accent mismatch with the acoustic model (the model is mostly US-trained).
LOCALE_ACCENT = np.array([0.0, 0.08, 0.18, 0.1])

APP_VERSIONS: tuple[str, ...] = ("4.2.1", "4.3.0", "4.3.2", "5.0.0")
APP_WEIGHTS = np.array([0.15, 0.3, 0.4, 0.15])

#: Hidden acoustic environments; never written to the traces.
ENVIRONMENTS: tuple[str, ...] = ("quiet", "tv_on", "kitchen", "car_noise")
#: Acoustic difficulty each environment adds.
ENV_NOISE = np.array([0.0, 0.3, 0.22, 0.28])
#: Rate of background speech that can trigger a false wake, per environment.
ENV_BACKGROUND = np.array([0.15, 1.0, 0.35, 0.3])
#: P(environment | device): rows are devices, columns environments.
ENV_GIVEN_DEVICE = np.array(
    [
        [0.5, 0.2, 0.3, 0.0],  # speaker
        [0.45, 0.2, 0.35, 0.0],  # screen
        [0.6, 0.15, 0.1, 0.15],  # phone
        [0.1, 0.0, 0.0, 0.9],  # car
        [0.35, 0.65, 0.0, 0.0],  # tv stick: the TV is often playing
    ]
)

# ---------------------------------------------------------------------------
# Intents
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    """One intent: its domain, the catalogue its slot resolves against, its slot name."""

    name: str
    domain: str
    catalogue: str | None  # entity catalogue of the slot (None: no slot)
    slot: str | None
    resolves: bool  # whether ER resolves the slot (timers are parsed, not resolved)


INTENTS: tuple[Intent, ...] = (
    Intent("TurnOnIntent", "smart_home", "device", "device", True),
    Intent("TurnOffIntent", "smart_home", "device", "device", True),
    Intent("OpenIntent", "smart_home", "device", "device", True),
    Intent("PlayMusicIntent", "music", "music", "music", True),
    Intent("PlayVideoIntent", "video", "video", "title", True),
    Intent("PlayAudiobookIntent", "audiobook", "audiobook", "title", True),
    Intent("GetWeatherIntent", "weather", "city", "city", True),
    Intent("AddToListIntent", "shopping", "item", "item", True),
    Intent("SetTimerIntent", "timer", "duration", "duration", False),
    Intent("QuestionIntent", "knowledge", "topic", "topic", True),
    Intent("UnsupportedIntent", "unsupported", None, None, False),
    Intent("StopIntent", "global", None, None, False),
    Intent("FallbackIntent", "unknown", None, None, False),
)
INTENT_INDEX = {it.name: i for i, it in enumerate(INTENTS)}
K = len(INTENTS)
I_STOP = INTENT_INDEX["StopIntent"]
I_FALLBACK = INTENT_INDEX["FallbackIntent"]
I_UNSUPPORTED = INTENT_INDEX["UnsupportedIntent"]
I_TIMER = INTENT_INDEX["SetTimerIntent"]
I_VIDEO = INTENT_INDEX["PlayVideoIntent"]
I_AUDIOBOOK = INTENT_INDEX["PlayAudiobookIntent"]
I_MUSIC = INTENT_INDEX["PlayMusicIntent"]
I_WEATHER = INTENT_INDEX["GetWeatherIntent"]
I_QUESTION = INTENT_INDEX["QuestionIntent"]

#: Domains in a fixed order (truth and profile breakdowns use these names).
DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(it.domain for it in INTENTS))
INTENT_DOMAIN = np.array([DOMAINS.index(it.domain) for it in INTENTS])

#: Goal mix per device type (rows devices, columns intents; Fallback is small talk,
#: Stop only arises as a reaction).
_GOAL_MIX = {
    #            on    off   open  music video book  wthr  shop  timer quest unsup
    "speaker": (0.10, 0.08, 0.02, 0.22, 0.02, 0.06, 0.13, 0.09, 0.13, 0.09, 0.06),
    "screen": (0.07, 0.05, 0.02, 0.14, 0.17, 0.05, 0.11, 0.08, 0.14, 0.11, 0.06),
    "phone": (0.05, 0.04, 0.02, 0.15, 0.05, 0.07, 0.14, 0.14, 0.11, 0.17, 0.06),
    "car": (0.02, 0.01, 0.04, 0.33, 0.0, 0.14, 0.16, 0.07, 0.02, 0.13, 0.08),
    "tv": (0.04, 0.03, 0.0, 0.12, 0.50, 0.05, 0.07, 0.02, 0.03, 0.08, 0.06),
}
GOAL_MIX = np.zeros((len(DEVICE_TYPES), K))
for _d, _row in _GOAL_MIX.items():
    GOAL_MIX[DEVICE_TYPES.index(_d), : len(_row)] = np.array(_row) / sum(_row)
# small talk ("thank you", "okay"): nothing to do, and doing nothing is right
GOAL_MIX[:, I_FALLBACK] = 0.05
GOAL_MIX /= GOAL_MIX.sum(axis=1, keepdims=True)

# ---------------------------------------------------------------------------
# Catalogues: entity -> display name, spoken aliases, handcrafted mishearings
# ---------------------------------------------------------------------------

# (catalogue, id, display name, spoken aliases (first is the usual), mishearings)
_ENTITIES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    # smart home devices
    ("device", "sh-01", "Kitchen lights", ("kitchen lights", "kitchen light"),
     ("chicken lights", "kitchen flights")),
    ("device", "sh-02", "Living room lamp", ("living room lamp", "lamp in the living room"),
     ("living room lamb", "giving room lamp")),
    ("device", "sh-03", "Bedroom light", ("bedroom light", "bedroom lights"),
     ("bad room light", "bedroom night")),
    ("device", "sh-04", "Bedroom lamp", ("bedroom lamp",), ("bedroom camp",)),
    ("device", "sh-05", "Garage door", ("garage door",), ("garbage store", "garage floor")),
    ("device", "sh-06", "Front door lock", ("front door", "front door lock"),
     ("front drawer", "fun door")),
    ("device", "sh-07", "Thermostat", ("thermostat", "heating"), ("thermos tat", "heating pad")),
    ("device", "sh-08", "Hallway light", ("hallway light", "hall light"),
     ("holloway light", "hallway lied")),
    ("device", "sh-09", "Porch light", ("porch light",), ("torch light", "porsche light")),
    ("device", "sh-10", "Bathroom fan", ("bathroom fan",), ("bathroom van", "bath rum fan")),
    ("device", "sh-11", "Office lamp", ("office lamp",), ("office camp", "offers lamp")),
    ("device", "sh-12", "Blinds", ("blinds", "the blinds"), ("lines", "blind")),
    ("device", "sh-13", "Patio heater", ("patio heater",), ("patty o heater", "radio heater")),
    ("device", "sh-14", "Back door", ("back door",), ("black door", "bach door")),
    # music
    ("music", "mu-01", "Adele", ("adele",), ("a dell", "adel")),
    ("music", "mu-02", "Taylor Swift", ("taylor swift",), ("tailor swift", "taylor's lift")),
    ("music", "mu-03", "The Beatles", ("the beatles", "beatles"), ("the needles", "the beetles")),
    ("music", "mu-04", "Queen", ("queen",), ("green", "quinn")),
    ("music", "mu-05", "Coldplay", ("coldplay",), ("cold play", "gold play")),
    ("music", "mu-06", "Beyoncé", ("beyonce",), ("beyond say", "be on say")),
    ("music", "mu-07", "Ed Sheeran", ("ed sheeran",), ("ed shearing", "head sheeran")),
    ("music", "mu-08", "Miles Davis", ("miles davis",), ("miles davies", "mild davis")),
    ("music", "mu-09", "Nina Simone", ("nina simone",), ("nina simon", "nine us simone")),
    ("music", "mu-10", "Bob Marley", ("bob marley",), ("bob barley", "bob marly")),
    ("music", "mu-11", "Daft Punk", ("daft punk",), ("daft funk", "deft punk")),
    ("music", "mu-12", "Fleetwood Mac", ("fleetwood mac",), ("fleet wood mack", "fleetwood")),
    ("music", "mu-13", "Radiohead", ("radiohead",), ("radio head", "radio ahead")),
    ("music", "mu-14", "ABBA", ("abba",), ("aba", "aber")),
    ("music", "mu-15", "Bach", ("bach", "johann sebastian bach"), ("back", "batch")),
    ("music", "mu-16", "Lizzo", ("lizzo",), ("liz oh", "lisa")),
    ("music", "mu-17", "Drake", ("drake",), ("drape", "rake")),
    ("music", "mu-18", "Arctic Monkeys", ("arctic monkeys",), ("arctic mountains", "artic monkey")),
    ("music", "mu-19", "Jazz for a rainy day", ("rainy day jazz", "jazz for a rainy day"),
     ("brainy day jazz",)),
    ("music", "mu-20", "Lo-fi beats", ("lo-fi beats", "lofi beats"), ("low five beats",)),
    # soundtracks share their film's title: "play frozen" is music or video
    ("music", "mu-21", "Frozen (soundtrack)", ("frozen",), ("chosen",)),
    ("music", "mu-22", "Top Gun (soundtrack)", ("top gun",), ("top fun",)),
    # video
    ("video", "vi-01", "Harry Potter and the Philosopher's Stone (film)", ("harry potter",),
     ("hairy potter", "harry porter")),
    ("video", "vi-02", "The Hobbit (film)", ("the hobbit",), ("the habit", "the rabbit")),
    ("video", "vi-03", "Dune (1984)", ("dune", "the old dune"), ("june", "doom")),
    ("video", "vi-04", "Dune (2021)", ("dune", "the new dune"), ("june", "doom")),
    ("video", "vi-05", "Little Women (2019)", ("little women",), ("little woman", "brittle women")),
    ("video", "vi-06", "The Martian (film)", ("the martian",), ("the marshall", "the martin")),
    ("video", "vi-07", "Gone Girl (film)", ("gone girl",), ("gone curl", "gun girl")),
    ("video", "vi-08", "Jurassic Park (film)", ("jurassic park",), ("jurassic bark",)),
    ("video", "vi-09", "Frozen", ("frozen",), ("chosen", "frozen two")),
    ("video", "vi-10", "Toy Story", ("toy story",), ("toys story", "tory story")),
    ("video", "vi-11", "The Office", ("the office",), ("the offers", "the orifice")),
    ("video", "vi-12", "Star Wars", ("star wars",), ("star worse", "start wars")),
    ("video", "vi-13", "Finding Nemo", ("finding nemo",), ("finding emo", "find in nemo")),
    ("video", "vi-14", "Inception", ("inception",), ("in session", "reception")),
    ("video", "vi-15", "Top Gun", ("top gun",), ("top fun", "pop gun")),
    ("video", "vi-16", "Pride and Prejudice (film)", ("pride and prejudice",),
     ("pride and prejudiced",)),
    # audiobooks
    ("audiobook", "ab-01", "Harry Potter and the Philosopher's Stone (audiobook)",
     ("harry potter",), ("hairy potter", "harry porter")),
    ("audiobook", "ab-02", "The Hobbit (audiobook)", ("the hobbit",), ("the habit", "the rabbit")),
    ("audiobook", "ab-03", "Dune (audiobook)", ("dune",), ("june", "doom")),
    ("audiobook", "ab-04", "Little Women (audiobook)", ("little women",), ("little woman",)),
    ("audiobook", "ab-07", "Pride and Prejudice (audiobook)", ("pride and prejudice",),
     ("pride and prejudiced",)),
    ("audiobook", "ab-08", "Atomic Habits", ("atomic habits",),
     ("atomic rabbits", "a comic habits")),
    ("audiobook", "ab-09", "Educated", ("educated",), ("educate it", "dedicated")),
    ("audiobook", "ab-10", "Becoming", ("becoming",), ("be coming", "beckoning")),
    ("audiobook", "ab-11", "Sapiens", ("sapiens",), ("say pins", "sapient")),
    ("audiobook", "ab-12", "The Alchemist", ("the alchemist",), ("the chemist", "the al chemist")),
    ("audiobook", "ab-13", "Born a Crime", ("born a crime",), ("born of crime", "porn a crime")),
    # weather cities
    ("city", "ci-01", "Paris", ("paris",), ("parish", "harris")),
    ("city", "ci-02", "London", ("london",), ("lunden", "london town")),
    ("city", "ci-03", "Boston", ("boston",), ("austin", "bostin")),
    ("city", "ci-04", "Austin", ("austin",), ("boston", "ostin")),
    ("city", "ci-05", "Dallas", ("dallas",), ("alice", "dallas texas")),
    ("city", "ci-06", "Denver", ("denver",), ("dover", "then were")),
    ("city", "ci-07", "Dover", ("dover",), ("denver", "dover")),
    ("city", "ci-08", "Seattle", ("seattle",), ("settle", "see at all")),
    ("city", "ci-09", "Sydney", ("sydney",), ("sidney", "kidney")),
    ("city", "ci-10", "Mumbai", ("mumbai", "bombay"), ("mum bye", "bombay")),
    ("city", "ci-11", "Dublin", ("dublin",), ("doubling", "double in")),
    ("city", "ci-12", "Berlin", ("berlin",), ("burling", "merlin")),
    ("city", "ci-13", "Rome", ("rome",), ("roam", "home")),
    ("city", "ci-14", "Chicago", ("chicago",), ("she cargo", "chicago illinois")),
    # shopping items
    ("item", "it-01", "Milk", ("milk",), ("mill", "silk")),
    ("item", "it-02", "Eggs", ("eggs",), ("legs", "ex")),
    ("item", "it-03", "Bread", ("bread",), ("bred", "red")),
    ("item", "it-04", "Paper towels", ("paper towels",), ("paper trails", "pay per towels")),
    ("item", "it-05", "Coffee", ("coffee",), ("toffee", "copy")),
    ("item", "it-06", "Toffee", ("toffee",), ("coffee",)),
    ("item", "it-07", "Bananas", ("bananas",), ("banana", "band honors")),
    ("item", "it-08", "Batteries", ("batteries",), ("bad trees", "batter ease")),
    ("item", "it-09", "Dish soap", ("dish soap",), ("fish soap", "dish soup")),
    ("item", "it-10", "Olive oil", ("olive oil",), ("all of oil", "olive toil")),
    ("item", "it-11", "Cereal", ("cereal",), ("serial", "surreal")),
    ("item", "it-12", "Rice", ("rice",), ("ice", "price")),
    ("item", "it-13", "Ice", ("ice",), ("rice", "eyes")),
    # timer durations (parsed by NLU, not resolved by ER)
    ("duration", "du-01", "5 minutes", ("five minutes",), ("nine minutes", "fine minutes")),
    ("duration", "du-02", "10 minutes", ("ten minutes",), ("two minutes", "then minutes")),
    ("duration", "du-03", "15 minutes", ("fifteen minutes",), ("fifty minutes",)),
    ("duration", "du-04", "50 minutes", ("fifty minutes",), ("fifteen minutes",)),
    ("duration", "du-05", "1 hour", ("one hour", "an hour"), ("one our", "on hour")),
    ("duration", "du-06", "30 seconds", ("thirty seconds",), ("thirteen seconds",)),
    ("duration", "du-07", "20 minutes", ("twenty minutes",), ("twenty one minutes",)),
    ("duration", "du-08", "2 minutes", ("two minutes",), ("ten minutes", "to minutes")),
    # knowledge topics
    ("topic", "kn-01", "Mount Everest", ("mount everest",), ("mount ever rest", "mount everett")),
    ("topic", "kn-02", "Eiffel Tower", ("the eiffel tower",),
     ("the awful tower", "the eiffel power")),
    ("topic", "kn-03", "Albert Einstein", ("albert einstein", "einstein"),
     ("albert one stein", "albert eisenstein")),
    ("topic", "kn-04", "The Moon", ("the moon",), ("the noon", "the mood")),
    ("topic", "kn-05", "Abraham Lincoln", ("abraham lincoln",), ("abraham lincoln's",)),
    ("topic", "kn-06", "Nile", ("the nile",), ("denial", "the mile")),
    ("topic", "kn-07", "William Shakespeare", ("shakespeare",), ("shake spear", "shakes beer")),
    ("topic", "kn-08", "Marie Curie", ("marie curie",), ("mary curry", "marie query")),
    ("topic", "kn-09", "Jupiter", ("jupiter",), ("jew peter", "juniper")),
    ("topic", "kn-10", "Great Barrier Reef", ("the great barrier reef",),
     ("the great barrier grief",)),
)

#: Things users ask for that no catalogue holds: shopping lists take them as free
#: text and questions go to web search; other services cannot serve them (a
#: request that cannot be served is `correct`). Unresolved is not always an error.
_FREE_ENTITIES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("item", "it-x1", "oat milk", ("oat milk",), ("goat milk", "oat mill")),
    ("item", "it-x2", "tinfoil", ("tinfoil", "tin foil"), ("tin oil",)),
    ("item", "it-x3", "sponges", ("sponges",), ("spongers",)),
    ("item", "it-x4", "birthday candles", ("birthday candles",), ("birthday sandals",)),
    ("topic", "kn-x1", "the speed of light", ("the speed of light",), ("the speed of flight",)),
    ("topic", "kn-x2", "the french revolution", ("the french revolution",),
     ("the french evolution",)),
    ("topic", "kn-x3", "black holes", ("black holes",), ("black poles",)),
    # content the services do not carry, a device never set up: cannot be served
    ("music", "mu-x1", "Sufjan Stevens", ("sufjan stevens",), ("soufjan stevens",)),
    ("music", "mu-x2", "The Wiggles", ("the wiggles",), ("the wriggles",)),
    ("video", "vi-x1", "Casablanca", ("casablanca",), ("casa blanca",)),
    ("video", "vi-x2", "The Godfather", ("the godfather",), ("the god father",)),
    ("audiobook", "ab-x1", "Moby Dick", ("moby dick",), ("moby deck",)),
    ("device", "sh-x1", "Garden sprinkler", ("garden sprinkler",), ("garden sprinkle",)),
)
_ENTITIES = _ENTITIES + _FREE_ENTITIES

CATALOGUES: tuple[str, ...] = ("device", "music", "video", "audiobook", "city", "item",
                               "duration", "topic")

# ---------------------------------------------------------------------------
# Phrasings. "{e}" is the entity slot. Unsupported requests may name a city.
# ---------------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[tuple[str, float], ...]] = {
    "TurnOnIntent": (("turn on the {e}", 3), ("switch on the {e}", 1), ("{e} on", 1),
                     ("can you turn on the {e}", 1), ("please turn the {e} on", 1)),
    "TurnOffIntent": (("turn off the {e}", 3), ("switch off the {e}", 1), ("{e} off", 1),
                      ("shut off the {e}", 1)),
    "OpenIntent": (("open the {e}", 3), ("can you open the {e}", 1), ("unlock the {e}", 1)),
    "PlayMusicIntent": (("play {e}", 4), ("play some {e}", 2), ("put on {e}", 1),
                        ("i want to listen to {e}", 1), ("play music by {e}", 1),
                        ("can you play {e}", 1)),
    "PlayVideoIntent": (("play {e}", 4), ("watch {e}", 2), ("i want to watch {e}", 1),
                        ("put on the movie {e}", 1), ("show me {e}", 1)),
    "PlayAudiobookIntent": (("play {e}", 3), ("read {e}", 2), ("play the audiobook {e}", 1),
                            ("read me {e}", 1), ("continue my book {e}", 1)),
    "GetWeatherIntent": (("what's the weather in {e}", 4), ("weather in {e}", 2),
                         ("will it rain in {e} tomorrow", 1), ("how cold is it in {e}", 1),
                         ("what's the weather like", 3), ("is it going to rain", 1)),
    "AddToListIntent": (("add {e} to my shopping list", 3), ("put {e} on the list", 1),
                        ("add {e}", 1), ("i need {e}", 1)),
    "SetTimerIntent": (("set a timer for {e}", 4), ("timer {e}", 1), ("start a {e} timer", 1),
                       ("wake me up in {e}", 1)),
    "QuestionIntent": (("how tall is {e}", 1), ("who was {e}", 1), ("tell me about {e}", 2),
                       ("how far away is {e}", 1), ("what is {e}", 1)),
    "UnsupportedIntent": (("order a pizza", 2), ("call me an uber", 1),
                          ("what's my bank balance", 1), ("book a flight to {e}", 2),
                          ("translate this into klingon", 1), ("do my homework", 1),
                          ("book a table for two", 1), ("send money to mom", 1),
                          ("find me a hotel in {e}", 1)),
    "FallbackIntent": (("thank you", 3), ("thanks", 2), ("okay", 1), ("good night", 1),
                       ("hello", 1), ("you're funny", 1), ("hmm", 1), ("what", 1), ("no", 1)),
    "StopIntent": (("stop", 4), ("cancel", 2), ("never mind", 1), ("shut up", 1),
                   ("stop it", 1), ("no stop", 1)),
}
#: Which catalogue fills "{e}" of an unsupported phrasing.
_UNSUPPORTED_CATALOGUE = "city"

#: What the TV or people nearby say; only ever heard through a false wake.
BACKGROUND_PHRASES: tuple[str, ...] = (
    "and now the weather for the weekend", "i told you to put it on the table",
    "play it again", "turn it off i said", "we should order pizza tonight",
    "the kitchen is a mess", "what time is the game", "stop talking", "next up the news",
    "did you see that", "open the door for him", "who was that", "add it to the list",
    "set the table please", "you never listen", "the lights are on", "hello there",
    "tell me about your day", "music to my ears", "i need a break",
    "that's the office", "okay", "no", "yeah right", "what",
)

#: Function words ASR may drop or swap; the phrase still means the same.
_FUNCTION_EDITS: tuple[tuple[str, str], ...] = (
    ("the ", ""), ("can you ", ""), ("please ", ""), ("to my ", "to the "), ("some ", "sum "),
    (" for ", " for a "), ("a ", "the "), ("me ", ""), ("in ", "and "), ("what's ", "what is "),
)
#: Content-word confusions: these change what the words mean.
_CONTENT_EDITS: tuple[tuple[str, str], ...] = (
    ("turn on", "turn off"), ("turn off", "turn on"), ("switch on", "switch off"),
    ("switch off", "switch on"), (" on", " off"), (" off", " on"), ("open", "hope in"),
    ("unlock", "and lock"), ("play ", "pay "), ("put on", "put off"),
    ("watch ", "wash "), ("read ", "red "), ("listen to", "lessen to"),
    ("weather", "whether"), ("rain", "train"), ("cold", "called"), ("add ", "had "),
    ("i need", "i knead"), ("timer", "time are"), ("wake me up", "make me up"),
    ("how tall", "how tell"), ("who was", "who does"), ("tell me about", "tell me a bit"),
    ("what is", "what if"), ("stop", "top"), ("cancel", "counsel"), ("order", "order"),
    ("book a", "look a"), ("show me", "show"), ("movie", "moody"), ("audiobook", "audio look"),
    ("shopping list", "shopping lift"), ("continue", "can you"), ("shut", "shop"),
)

# ---------------------------------------------------------------------------
# NLU: keyword cues read off the text (the gazetteer does the rest)
# ---------------------------------------------------------------------------

#: (regex on the text around the slot, intent, weight)
_CUES: tuple[tuple[str, str, float], ...] = (
    (r"\bturn on\b|\bswitch on\b|\bturn the \{e\} on\b|\{e\} on$", "TurnOnIntent", 1.0),
    (r"\bturn off\b|\bswitch off\b|\bshut off\b|\{e\} off$|turn it off", "TurnOffIntent", 1.0),
    (r"\bopen\b|\bunlock\b", "OpenIntent", 1.0),
    (r"\bthe lights\b", "TurnOnIntent", 0.4),
    (r"\bplay\b|\bput on\b", "PlayMusicIntent", 0.6),
    (r"\bplay\b|\bput on\b", "PlayVideoIntent", 0.6),
    (r"\bplay\b", "PlayAudiobookIntent", 0.6),
    (r"\blisten\b|\bmusic\b", "PlayMusicIntent", 0.8),
    (r"\bwatch\b|\bmovie\b|\bshow me\b", "PlayVideoIntent", 0.9),
    (r"\baudiobook\b|\bread\b|\bmy book\b", "PlayAudiobookIntent", 0.9),
    (r"\bweather\b|\brain\b|\bcold\b|\bforecast\b", "GetWeatherIntent", 1.0),
    (r"\bshopping list\b|\bthe list\b|\badd\b|\bi need\b", "AddToListIntent", 0.9),
    (r"\btimer\b|\bwake me\b", "SetTimerIntent", 1.0),
    (r"\bhow tall\b|\bwho was\b|\btell me about\b|\bhow far\b|\bwhat is\b", "QuestionIntent", 0.9),
    (r"\border\b|\bbook a\b|\bcall me\b|\bbank\b|\btranslate\b|\bhomework\b|\bsend money\b"
     r"|\bhotel\b|\bpizza\b", "UnsupportedIntent", 1.4),
    (r"^stop\b|^cancel\b|^never mind\b|^shut up\b|\bstop talking\b|^no stop\b", "StopIntent", 1.3),
    (r"\bflight\b", "UnsupportedIntent", 0.3),
)
#: Score the fallback intent gets: an utterance matching nothing falls back.
FALLBACK_SCORE = 0.55
#: Weight of the gazetteer (fuzzy match of the slot text against a catalogue).
GAZ_WEIGHT = 0.9

#: The assistant's usual responses, per response kind (``fpi.simulate.engine`` picks the kind).
_RESPONSES: tuple[str, ...] = (
    "Turning on {x}.",  # 0
    "Turning off {x}.",  # 1
    "Opening {x}.",  # 2
    "Playing {x}.",  # 3
    "Here's {x}.",  # 4
    "Resuming {x}.",  # 5
    "Right now in {x} it's mild with light clouds.",  # 6
    "I've added {x} to your shopping list.",  # 7
    "Timer set for {x}.",  # 8
    "Here's what I found about {x}.",  # 9
    "Sorry, I can't help with that yet.",  # 10
    "That's not something I can do yet.",  # 11
    "Sorry, I didn't catch that.",  # 12
    "Sorry, I'm not sure about that.",  # 13
    "Sorry, I couldn't find {x}.",  # 14
    "I don't know {x}, sorry.",  # 15
    "Did you mean {x}?",  # 16
    "Sorry, something went wrong.",  # 17
    "Sorry, I'm having trouble right now. Please try again later.",  # 18
    "What would you like me to do with that?",  # 19
    "It's mild with light clouds where you are.",  # 20
    "Which one?",  # 21
    "Here's what I found on the web about {x}.",  # 22
)

ENGLISH = Language(
    code="en",
    locales=LOCALES,
    locale_weights=tuple(float(w) for w in LOCALE_WEIGHTS),
    locale_accent=tuple(float(a) for a in LOCALE_ACCENT),
    entities=_ENTITIES,
    free_ids=frozenset(e[1] for e in _FREE_ENTITIES),
    templates=_TEMPLATES,
    background=BACKGROUND_PHRASES,
    function_edits=_FUNCTION_EDITS,
    content_edits=_CONTENT_EDITS,
    cues=_CUES,
    responses=tuple((r,) for r in _RESPONSES),
    confirmations=("OK.", "Done.", "Okay.", "Sure."),
)

#: Language packs by code.
LANGUAGES: dict[str, Language] = {
    lang.code: lang for lang in (ENGLISH, lang_de.GERMAN, lang_es.SPANISH, lang_ja.JAPANESE)
}


def get_language(code: str) -> Language:
    """The language pack for ``code`` (``en``, ``de``, ``es``, ``ja``)."""
    try:
        return LANGUAGES[code]
    except KeyError:
        raise ValueError(f"unknown language {code!r}; known: {', '.join(LANGUAGES)}") from None


def nlu_cues(text: str, cues: tuple[tuple[str, str, float], ...] = _CUES) -> np.ndarray:
    """Keyword cue scores of a phrasing (with ``{e}`` in place of the slot), one per intent."""
    cue = np.zeros(K)
    for pattern, intent, weight in _compiled(cues):
        if pattern.search(text):
            k = INTENT_INDEX[intent]
            cue[k] = max(cue[k], weight)
    return cue


@lru_cache(maxsize=8)
def _compiled(
    cues: tuple[tuple[str, str, float], ...],
) -> tuple[tuple[re.Pattern[str], str, float], ...]:
    return tuple((re.compile(p), i, w) for p, i, w in cues)


# ---------------------------------------------------------------------------
# Derived tables
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    """Integer-indexed tables the engine works on (built once by :func:`tables`)."""

    # entities
    ent_catalogue: np.ndarray  # (E,) catalogue index
    ent_id: tuple[str, ...]
    ent_name: tuple[str, ...]
    ent_indexed: np.ndarray  # (E,) bool: in the ER index (free-text things are not)
    cat_indexed: tuple[np.ndarray, ...]  # per catalogue, indexed entity indices
    cat_entities: tuple[np.ndarray, ...]  # per catalogue, entity indices
    # mentions (ways an entity reaches NLU)
    men_text: tuple[str, ...]
    men_entity: np.ndarray  # (M,) entity it was spoken for
    men_kind: np.ndarray  # (M,) 0 name/alias as spoken by users, 1 mishearing
    ent_aliases: tuple[np.ndarray, ...]  # per entity, mention ids of its spoken aliases
    ent_mishear: tuple[np.ndarray, ...]  # per entity, mention ids of its mishearings
    men_same_meaning: np.ndarray  # (M,) entity the mention *denotes* if it is an alias, else -1
    # fuzzy scores: mention x entity (ER) and mention x catalogue max (NLU gazetteer)
    sim: np.ndarray  # (M, E) float32 in [0, 1]
    gaz: np.ndarray  # (M, n_catalogues)
    # templates
    tpl_text: tuple[str, ...]
    tpl_intent: np.ndarray  # (T,) intent the base phrasing expresses
    tpl_has_slot: np.ndarray  # (T,) bool
    tpl_func: np.ndarray  # (T,) id of the function-word variant (itself if none)
    tpl_content: np.ndarray  # (T,) id of the content-word variant (itself if none)
    tpl_cue: np.ndarray  # (T, K) NLU cues read off the text
    tpl_words: np.ndarray  # (T,) word count without the slot
    intent_templates: tuple[np.ndarray, ...]  # per intent, base template ids
    intent_template_p: tuple[np.ndarray, ...]
    background_templates: np.ndarray  # template ids of background phrases
    # NLU/ER helpers
    intent_catalogue: np.ndarray  # (K,) catalogue NLU/ER use for the slot, or -1
    goal_catalogue: np.ndarray  # (K,) catalogue a goal's "{e}" is drawn from, or -1
    men_words: np.ndarray  # (M,) word count


def _edit(text: str, edits: tuple[tuple[str, str], ...], spaced: bool = True) -> str:
    """Apply the first edit whose words occur in ``text`` (whole words only, when the
    language separates words; otherwise any occurrence outside the slot)."""
    for old, new in edits:
        if spaced:
            pattern = r"(?<![\w{])" + re.escape(old.strip()) + r"(?![\w}])"
        else:
            pattern = re.escape(old)
        match = re.search(pattern, text)
        if match and old != new:
            out = text[: match.start()] + new.strip() + text[match.end() :]
            return " ".join(out.split())
    return text


def _auto_mishearings(alias: str) -> list[str]:
    """A generic sound-alike: one consonant voiced/unvoiced (fuzzy match often recovers it)."""
    swaps = {"b": "p", "p": "b", "d": "t", "t": "d", "g": "k", "k": "g", "v": "f", "f": "v",
             "s": "z", "m": "n", "n": "m"}
    for i in range(len(alias) - 1, -1, -1):
        ch = alias[i]
        if ch in swaps:
            return [alias[:i] + swaps[ch] + alias[i + 1 :]]
    return []


@dataclass
class _Numbered:
    """Distinct items numbered in order of first use, each with its attributes."""

    text: list[str] = field(default_factory=list)
    #: per item: the entity (mentions) or intent (templates) it belongs to
    owner: list[int] = field(default_factory=list)
    #: per item: 0 name or alias as users say it, 1 mishearing (mentions only)
    kind: list[int] = field(default_factory=list)
    _ids: dict[str, int] = field(default_factory=dict)

    def add(self, text: str, owner: int, kind: int = 0, key: str | None = None) -> int:
        """The id of ``text`` (registered under ``key``, by default the text itself)."""
        key = text if key is None else key
        if key not in self._ids:
            self._ids[key] = len(self.text)
            self.text.append(text)
            self.owner.append(owner)
            self.kind.append(kind)
        return self._ids[key]


def _mentions(
    entities: tuple[EntityRow, ...],
) -> tuple[_Numbered, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Every mention of an entity (its aliases, its mishearings), and per entity the
    mention ids of its aliases and of its mishearings."""
    mentions = _Numbered()

    def add(text: str, entity: int, kind: int) -> int:
        return mentions.add(text, entity, kind, key=f"{entity}|{text}")

    aliases: list[np.ndarray] = []
    mishear: list[np.ndarray] = []
    for entity, (_cat, _eid, _name, names, mishearings) in enumerate(entities):
        aliases.append(np.array([add(alias, entity, 0) for alias in names]))
        extra = _auto_mishearings(names[0])
        mishear.append(np.array([add(heard, entity, 1) for heard in (*mishearings, *extra)
                                 if heard not in names]))
    return mentions, tuple(aliases), tuple(mishear)


def _similarity(
    mention_text: list[str], entities: tuple[EntityRow, ...], ent_catalogue: np.ndarray,
    indexed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuzzy scores: mention x entity (its best-matching name, for ER) and mention x
    catalogue (the best indexed entity, NLU's gazetteer)."""
    # every string a user can say for an entity, and what it denotes
    match_names = [(alias, entity) for entity, row in enumerate(entities) for alias in row[3]]
    names = [alias for alias, _ in match_names]
    owner = np.array([entity for _, entity in match_names])
    raw = cdist(mention_text, names, scorer=fuzz.ratio, dtype=np.float32) / 100.0
    sim = np.zeros((len(mention_text), len(entities)), dtype=np.float32)
    for column, entity in enumerate(owner):
        np.maximum(sim[:, entity], raw[:, column], out=sim[:, entity])
    gaz = np.zeros((len(mention_text), len(CATALOGUES)))
    for catalogue in range(len(CATALOGUES)):
        members = np.flatnonzero((ent_catalogue == catalogue) & indexed)
        gaz[:, catalogue] = sim[:, members].max(axis=1)
    return sim, gaz


def _templates(
    lang: Language,
) -> tuple[_Numbered, tuple[np.ndarray, ...], tuple[np.ndarray, ...], np.ndarray]:
    """Base phrasings per intent (ids and probabilities), background phrases and the bare
    slot; then :func:`_asr_variants` adds their variants to the same numbering."""
    templates = _Numbered()
    intent_templates: list[np.ndarray] = []
    intent_template_p: list[np.ndarray] = []
    for intent in INTENTS:
        rows = lang.templates.get(intent.name, ())
        ids = [templates.add(text, INTENT_INDEX[intent.name]) for text, _ in rows]
        weights = np.array([weight for _, weight in rows], dtype=float)
        intent_templates.append(np.array(ids, dtype=np.int64))
        intent_template_p.append(weights / weights.sum() if len(weights) else weights)
    background = np.array([templates.add(text, I_FALLBACK) for text in lang.background])
    templates.add("{e}", I_FALLBACK)  # the bare slot: renders a mention on its own
    return templates, tuple(intent_templates), tuple(intent_template_p), background


def _asr_variants(templates: _Numbered, lang: Language) -> tuple[np.ndarray, np.ndarray]:
    """Each template's function-word and content-word variant (ids), two generations
    deep (a content error on top of a dropped function word, and vice versa); deeper
    variants point to themselves."""
    func: dict[int, int] = {}
    content: dict[int, int] = {}
    frontier = list(range(len(templates.text)))
    for _ in range(2):
        new: list[int] = []
        for tpl in frontier:
            for table, edits in ((func, lang.function_edits), (content, lang.content_edits)):
                before = len(templates.text)
                table[tpl] = templates.add(_edit(templates.text[tpl], edits, lang.spaced),
                                           templates.owner[tpl])
                if len(templates.text) > before:
                    new.append(table[tpl])
        frontier = new
    count = len(templates.text)
    return (np.array([func.get(tpl, tpl) for tpl in range(count)]),
            np.array([content.get(tpl, tpl) for tpl in range(count)]))


@lru_cache(maxsize=8)
def tables(language: str = "en") -> Tables:
    """Build (once per language) the integer tables of the world."""
    lang = get_language(language)
    entities = lang.entities
    cat_index = {name: i for i, name in enumerate(CATALOGUES)}
    ent_catalogue = np.array([cat_index[row[0]] for row in entities])
    ent_id = tuple(row[1] for row in entities)
    indexed = np.array([eid not in lang.free_ids for eid in ent_id])
    mentions, aliases, mishear = _mentions(entities)
    sim, gaz = _similarity(mentions.text, entities, ent_catalogue, indexed)
    templates, intent_templates, intent_template_p, background = _templates(lang)
    func, content = _asr_variants(templates, lang)
    intent_catalogue = np.array(
        [cat_index[it.catalogue] if it.catalogue else -1 for it in INTENTS]
    )
    unsupported_cat = cat_index[_UNSUPPORTED_CATALOGUE]  # every language: a city
    catalogues = range(len(CATALOGUES))
    return Tables(
        ent_catalogue=ent_catalogue,
        ent_id=ent_id,
        ent_name=tuple(row[2] for row in entities),
        ent_indexed=indexed,
        cat_indexed=tuple(np.flatnonzero((ent_catalogue == c) & indexed) for c in catalogues),
        cat_entities=tuple(np.flatnonzero(ent_catalogue == c) for c in catalogues),
        men_text=tuple(mentions.text),
        men_entity=np.array(mentions.owner),
        men_kind=np.array(mentions.kind),
        ent_aliases=aliases,
        ent_mishear=mishear,
        men_same_meaning=np.array([entity if kind == 0 else -1
                                   for entity, kind in zip(mentions.owner, mentions.kind,
                                                           strict=True)]),
        sim=sim,
        gaz=gaz,
        tpl_text=tuple(templates.text),
        tpl_intent=np.array(templates.owner),
        tpl_has_slot=np.array(["{e}" in text for text in templates.text]),
        tpl_func=func,
        tpl_content=content,
        tpl_cue=np.stack([nlu_cues(text, lang.cues) for text in templates.text]),
        tpl_words=np.array([lang.word_count(text) for text in templates.text]),
        intent_templates=intent_templates,
        intent_template_p=intent_template_p,
        background_templates=background,
        intent_catalogue=intent_catalogue,
        goal_catalogue=np.where(np.arange(K) == I_UNSUPPORTED, unsupported_cat, intent_catalogue),
        men_words=np.array([lang.word_count(text) for text in mentions.text]),
    )
