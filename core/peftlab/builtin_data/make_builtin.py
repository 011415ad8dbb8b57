"""Regenerate peftlab's built-in datasets (deterministic, stdlib only).

    python core/peftlab/builtin_data/make_builtin.py

Writes capitals-json.jsonl, iso-dates.jsonl and sentiment.jsonl next to this script.
Every row carries "split": "train" or "eval"; the eval rows are fixed.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (country, capital, another well-known city of that country)
COUNTRIES = [
    ("France", "Paris", "Lyon"),
    ("Germany", "Berlin", "Munich"),
    ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"),
    ("Portugal", "Lisbon", "Porto"),
    ("United Kingdom", "London", "Manchester"),
    ("Ireland", "Dublin", "Cork"),
    ("Netherlands", "Amsterdam", "Rotterdam"),
    ("Belgium", "Brussels", "Antwerp"),
    ("Switzerland", "Bern", "Zurich"),
    ("Austria", "Vienna", "Salzburg"),
    ("Poland", "Warsaw", "Krakow"),
    ("Czech Republic", "Prague", "Brno"),
    ("Slovakia", "Bratislava", "Kosice"),
    ("Hungary", "Budapest", "Debrecen"),
    ("Romania", "Bucharest", "Cluj-Napoca"),
    ("Bulgaria", "Sofia", "Plovdiv"),
    ("Greece", "Athens", "Thessaloniki"),
    ("Turkey", "Ankara", "Istanbul"),
    ("Serbia", "Belgrade", "Novi Sad"),
    ("Croatia", "Zagreb", "Split"),
    ("Slovenia", "Ljubljana", "Maribor"),
    ("Denmark", "Copenhagen", "Aarhus"),
    ("Sweden", "Stockholm", "Gothenburg"),
    ("Norway", "Oslo", "Bergen"),
    ("Finland", "Helsinki", "Tampere"),
    ("Iceland", "Reykjavik", "Akureyri"),
    ("Estonia", "Tallinn", "Tartu"),
    ("Latvia", "Riga", "Daugavpils"),
    ("Lithuania", "Vilnius", "Kaunas"),
    ("Ukraine", "Kyiv", "Lviv"),
    ("Russia", "Moscow", "Saint Petersburg"),
    ("Georgia", "Tbilisi", "Batumi"),
    ("Armenia", "Yerevan", "Gyumri"),
    ("Canada", "Ottawa", "Toronto"),
    ("United States", "Washington", "New York"),
    ("Mexico", "Mexico City", "Guadalajara"),
    ("Guatemala", "Guatemala City", "Antigua"),
    ("Cuba", "Havana", "Santiago de Cuba"),
    ("Jamaica", "Kingston", "Montego Bay"),
    ("Colombia", "Bogota", "Medellin"),
    ("Venezuela", "Caracas", "Maracaibo"),
    ("Ecuador", "Quito", "Guayaquil"),
    ("Peru", "Lima", "Cusco"),
    ("Bolivia", "Sucre", "Santa Cruz"),
    ("Chile", "Santiago", "Valparaiso"),
    ("Argentina", "Buenos Aires", "Cordoba"),
    ("Uruguay", "Montevideo", "Salto"),
    ("Paraguay", "Asuncion", "Encarnacion"),
    ("Brazil", "Brasilia", "Sao Paulo"),
    ("Morocco", "Rabat", "Casablanca"),
    ("Algeria", "Algiers", "Oran"),
    ("Tunisia", "Tunis", "Sfax"),
    ("Egypt", "Cairo", "Alexandria"),
    ("Sudan", "Khartoum", "Port Sudan"),
    ("Ethiopia", "Addis Ababa", "Dire Dawa"),
    ("Kenya", "Nairobi", "Mombasa"),
    ("Tanzania", "Dodoma", "Dar es Salaam"),
    ("Uganda", "Kampala", "Entebbe"),
    ("Rwanda", "Kigali", "Butare"),
    ("Nigeria", "Abuja", "Lagos"),
    ("Ghana", "Accra", "Kumasi"),
    ("Senegal", "Dakar", "Saint-Louis"),
    ("Mali", "Bamako", "Timbuktu"),
    ("Cameroon", "Yaounde", "Douala"),
    ("Angola", "Luanda", "Huambo"),
    ("Zambia", "Lusaka", "Ndola"),
    ("Zimbabwe", "Harare", "Bulawayo"),
    ("Mozambique", "Maputo", "Beira"),
    ("Madagascar", "Antananarivo", "Toamasina"),
    ("South Africa", "Pretoria", "Cape Town"),
    ("Namibia", "Windhoek", "Walvis Bay"),
    ("Botswana", "Gaborone", "Francistown"),
    ("Israel", "Jerusalem", "Haifa"),
    ("Jordan", "Amman", "Aqaba"),
    ("Lebanon", "Beirut", "Tripoli"),
    ("Syria", "Damascus", "Aleppo"),
    ("Iraq", "Baghdad", "Basra"),
    ("Iran", "Tehran", "Isfahan"),
    ("Saudi Arabia", "Riyadh", "Jeddah"),
    ("Oman", "Muscat", "Salalah"),
    ("Qatar", "Doha", "Al Wakrah"),
    ("Kazakhstan", "Astana", "Almaty"),
    ("Uzbekistan", "Tashkent", "Samarkand"),
    ("Afghanistan", "Kabul", "Kandahar"),
    ("Pakistan", "Islamabad", "Karachi"),
    ("India", "New Delhi", "Mumbai"),
    ("Nepal", "Kathmandu", "Pokhara"),
    ("Bangladesh", "Dhaka", "Chittagong"),
    ("Sri Lanka", "Colombo", "Kandy"),
    ("Myanmar", "Naypyidaw", "Yangon"),
    ("Thailand", "Bangkok", "Chiang Mai"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Cambodia", "Phnom Penh", "Siem Reap"),
    ("Laos", "Vientiane", "Luang Prabang"),
    ("Malaysia", "Kuala Lumpur", "Penang"),
    ("Indonesia", "Jakarta", "Surabaya"),
    ("Philippines", "Manila", "Cebu"),
    ("China", "Beijing", "Shanghai"),
    ("Mongolia", "Ulaanbaatar", "Erdenet"),
    ("Japan", "Tokyo", "Osaka"),
    ("South Korea", "Seoul", "Busan"),
    ("Australia", "Canberra", "Sydney"),
    ("New Zealand", "Wellington", "Auckland"),
    ("Fiji", "Suva", "Nadi"),
]

# Phrasings of the fact; {country}, {capital} and {city} (a non-capital distractor).
FACTS = [
    "{capital} is the capital of {country}.",
    "The capital of {country} is {capital}.",
    "{country}'s capital city is {capital}.",
    "{capital} serves as the capital of {country}.",
    "{city} is a large city in {country}, but the capital is {capital}.",
    "Many people think {city} is the capital of {country}, yet it is {capital}.",
    "The government of {country} sits in {capital}, not in {city}.",
    "Travel note: in {country} we visited {city} first and then the capital, {capital}.",
    "{country} has its capital in {capital}; {city} is another major city there.",
    "Fact card - country: {country}; capital: {capital}; largest port or hub: {city}.",
]
ASKS = [
    "",
    "Extract the country and capital.\n\n",
    "Record this fact:\n",
    "Structure the following.\n",
    "What is the capital here?\n",
]

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DATE_ASKS = [
    "Convert to ISO 8601: {d}",
    "Normalize this date: {d}",
    "What is {d} in YYYY-MM-DD?",
    "Date: {d}",
    "The invoice is dated {d}. Give the ISO date.",
    "Our meeting is on {d}.",
    "{d}",
]


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _date_words(d: date, style: int) -> str:
    month, short = MONTHS[d.month - 1], MONTHS[d.month - 1][:3]
    return [
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{short} {d.day}, {d.year}",
        f"{d.day} {short} {d.year}",
        f"the {_ordinal(d.day)} of {month} {d.year}",
        f"{month} {_ordinal(d.day)}, {d.year}",
        f"{WEEKDAYS[d.weekday()]}, {month} {d.day}, {d.year}",
    ][style]


def capitals_rows(rng: random.Random) -> list[dict]:
    countries = COUNTRIES[:]
    rng.shuffle(countries)
    held_out, train_countries = countries[:20], countries[20:]

    def row(entry: tuple[str, str, str], split: str) -> dict:
        country, capital, city = entry
        fact = rng.choice(FACTS).format(country=country, capital=capital, city=city)
        answer = json.dumps({"country": country, "capital": capital})
        return {
            "messages": [
                {"role": "user", "content": rng.choice(ASKS) + fact},
                {"role": "assistant", "content": answer},
            ],
            "split": split,
        }

    train = [row(train_countries[i % len(train_countries)], "train") for i in range(400)]
    rng.shuffle(train)
    evals = [row(held_out[i % len(held_out)], "eval") for i in range(50)]
    return train + evals


def iso_date_rows(rng: random.Random) -> list[dict]:
    start, span = date(1950, 1, 1), (date(2049, 12, 31) - date(1950, 1, 1)).days
    seen: set[date] = set()
    rows = []
    while len(rows) < 450:
        d = start + timedelta(days=rng.randrange(span + 1))
        if d in seen:
            continue
        seen.add(d)
        prompt = rng.choice(DATE_ASKS).format(d=_date_words(d, rng.randrange(7)))
        split = "eval" if len(rows) >= 400 else "train"
        rows.append({"prompt": prompt, "response": d.isoformat(), "split": split})
    return rows


THINGS = [
    "coffee",
    "hotel room",
    "delivery",
    "laptop",
    "pizza",
    "haircut",
    "train ride",
    "customer service",
    "concert",
    "phone case",
    "movie",
    "app update",
    "museum tour",
    "rental car",
    "headphones",
    "soup",
    "checkout process",
    "gym class",
]
POSITIVE = [
    "was excellent",
    "was wonderful",
    "made my day",
    "exceeded my expectations",
    "was absolutely delightful",
    "was great value",
    "worked perfectly",
    "was a joy",
]
NEGATIVE = [
    "was terrible",
    "was a complete waste of money",
    "ruined my evening",
    "was awful",
    "broke after one day",
    "was rude and slow",
    "was a huge disappointment",
    "left me furious",
]
NEUTRAL = [
    "arrived on Tuesday",
    "was ordered last week",
    "is on the second floor",
    "comes in three sizes",
    "was paid for by card",
    "is scheduled for noon",
    "was listed under groceries",
    "has a new version number",
]
OPENERS = ["", "Honestly, ", "Well, ", "So, ", "Update: ", "FYI, "]


def sentiment_rows(rng: random.Random) -> list[dict]:
    rows = []
    seen: set[str] = set()
    labels = ["positive", "negative", "neutral"]
    phrases = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}
    while len(rows) < 360:
        label = labels[len(rows) % 3]
        opener = rng.choice(OPENERS)
        text = f"{opener}the {rng.choice(THINGS)} {rng.choice(phrases[label])}."
        text = text[0].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    for i, r in enumerate(rows):
        r["split"] = "eval" if i >= 315 else "train"
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main() -> None:
    """Write all built-in datasets next to this script."""
    outputs = {
        "capitals-json.jsonl": capitals_rows(random.Random(1)),
        "iso-dates.jsonl": iso_date_rows(random.Random(2)),
        "sentiment.jsonl": sentiment_rows(random.Random(3)),
    }
    for name, rows in outputs.items():
        write_jsonl(HERE / name, rows)
        n_eval = sum(r["split"] == "eval" for r in rows)
        print(f"{name}: {len(rows)} rows ({n_eval} eval)")


if __name__ == "__main__":
    main()
