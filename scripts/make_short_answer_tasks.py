"""Two short-answer tasks for checking preference tuning away from the demo data:

    python scripts/make_short_answer_tasks.py OUT_DIR

- capitals: "What is the capital of X?" -> the city's name alone. Rejected answers: another country's capital
  (wrong), a full sentence (verbose) or the name with a trailing remark (format). Written as
  prompt/chosen/rejected rows with conversational answers (the Hugging Face layout).
- sentiment: a short product review -> "positive" or "negative". Rejected answers: the other label (wrong),
  "The sentiment is ..." (verbose) or a capitalised label with "!" (format). Written in OpenAI's DPO format.

Train and test use disjoint countries (capitals) and disjoint products (sentiment), so held-out accuracy
measures what generalises, not what was memorised. For each task the script also writes chat-format
files (`*_train_chat.jsonl`, `*_test_chat.jsonl`: the prompt and the reference answer) for SFT, GRPO prompts
and `tuneforge eval` exact match. A fixed seed makes the files repeatable.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 11

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Netherlands": "Amsterdam", "Belgium": "Brussels", "Austria": "Vienna", "Switzerland": "Bern",
    "Poland": "Warsaw", "Czech Republic": "Prague", "Slovakia": "Bratislava", "Hungary": "Budapest",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Greece": "Athens", "Turkey": "Ankara", "Sweden": "Stockholm",
    "Norway": "Oslo", "Denmark": "Copenhagen", "Finland": "Helsinki", "Iceland": "Reykjavik", "Ireland": "Dublin",
    "United Kingdom": "London", "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "Ukraine": "Kyiv",
    "Belarus": "Minsk", "Russia": "Moscow", "Serbia": "Belgrade", "Croatia": "Zagreb", "Slovenia": "Ljubljana",
    "Bosnia and Herzegovina": "Sarajevo", "Albania": "Tirana", "North Macedonia": "Skopje",
    "Montenegro": "Podgorica", "Moldova": "Chisinau", "Malta": "Valletta", "Cyprus": "Nicosia",
    "Georgia": "Tbilisi", "Armenia": "Yerevan", "Azerbaijan": "Baku", "Kazakhstan": "Astana",
    "Uzbekistan": "Tashkent", "Turkmenistan": "Ashgabat", "Kyrgyzstan": "Bishkek", "Tajikistan": "Dushanbe",
    "Afghanistan": "Kabul", "Pakistan": "Islamabad", "India": "New Delhi", "Nepal": "Kathmandu",
    "Bhutan": "Thimphu", "Bangladesh": "Dhaka", "Sri Lanka": "Colombo", "Myanmar": "Naypyidaw",
    "Thailand": "Bangkok", "Laos": "Vientiane", "Cambodia": "Phnom Penh", "Vietnam": "Hanoi",
    "Malaysia": "Kuala Lumpur", "Indonesia": "Jakarta", "Philippines": "Manila", "China": "Beijing",
    "Mongolia": "Ulaanbaatar", "Japan": "Tokyo", "South Korea": "Seoul", "North Korea": "Pyongyang",
    "Taiwan": "Taipei", "Iran": "Tehran", "Iraq": "Baghdad", "Syria": "Damascus", "Lebanon": "Beirut",
    "Jordan": "Amman", "Saudi Arabia": "Riyadh", "Yemen": "Sanaa", "Oman": "Muscat",
    "United Arab Emirates": "Abu Dhabi", "Qatar": "Doha", "Bahrain": "Manama", "Egypt": "Cairo",
    "Libya": "Tripoli", "Tunisia": "Tunis", "Algeria": "Algiers", "Morocco": "Rabat", "Sudan": "Khartoum",
    "Ethiopia": "Addis Ababa", "Eritrea": "Asmara", "Somalia": "Mogadishu", "Kenya": "Nairobi",
    "Uganda": "Kampala", "Tanzania": "Dodoma", "Rwanda": "Kigali", "Burundi": "Gitega", "Nigeria": "Abuja",
    "Ghana": "Accra", "Senegal": "Dakar", "Mali": "Bamako", "Niger": "Niamey", "Chad": "N'Djamena",
    "Cameroon": "Yaounde", "Gabon": "Libreville", "Angola": "Luanda", "Zambia": "Lusaka", "Zimbabwe": "Harare",
    "Mozambique": "Maputo", "Botswana": "Gaborone", "Namibia": "Windhoek", "Madagascar": "Antananarivo",
    "Malawi": "Lilongwe", "Liberia": "Monrovia", "Sierra Leone": "Freetown", "Guinea": "Conakry",
    "Togo": "Lome", "Benin": "Porto-Novo", "Burkina Faso": "Ouagadougou", "Mauritania": "Nouakchott",
    "South Sudan": "Juba", "Canada": "Ottawa", "Mexico": "Mexico City", "Guatemala": "Guatemala City",
    "Honduras": "Tegucigalpa", "El Salvador": "San Salvador", "Nicaragua": "Managua", "Costa Rica": "San Jose",
    "Panama": "Panama City", "Cuba": "Havana", "Jamaica": "Kingston", "Haiti": "Port-au-Prince",
    "Dominican Republic": "Santo Domingo", "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Peru": "Lima", "Bolivia": "Sucre", "Chile": "Santiago", "Argentina": "Buenos Aires",
    "Uruguay": "Montevideo", "Paraguay": "Asuncion", "Brazil": "Brasilia", "Guyana": "Georgetown",
    "Suriname": "Paramaribo", "Australia": "Canberra", "New Zealand": "Wellington",
    "Papua New Guinea": "Port Moresby", "Fiji": "Suva", "Samoa": "Apia", "Bahamas": "Nassau",
    "Barbados": "Bridgetown", "Trinidad and Tobago": "Port of Spain", "Belize": "Belmopan",
    "Brunei": "Bandar Seri Begawan", "East Timor": "Dili", "Maldives": "Male", "Seychelles": "Victoria",
    "Mauritius": "Port Louis", "Cape Verde": "Praia", "Gambia": "Banjul", "Lesotho": "Maseru",
    "Eswatini": "Mbabane", "Democratic Republic of the Congo": "Kinshasa", "Central African Republic": "Bangui",
    "Equatorial Guinea": "Malabo", "Andorra": "Andorra la Vella", "Liechtenstein": "Vaduz",
}  # fmt: skip

POSITIVE = ["excellent", "wonderful", "great", "fantastic", "superb", "lovely", "delightful", "amazing",
            "reliable", "comfortable", "sturdy", "helpful", "beautiful", "perfect", "impressive", "pleasant"]
NEGATIVE = ["terrible", "awful", "broken", "slow", "disappointing", "flimsy", "useless", "noisy", "dirty",
            "faulty", "uncomfortable", "horrible", "poor", "damaged", "unreliable", "overpriced"]
PRODUCTS = ["headphones", "blender", "hotel room", "pizza", "laptop", "jacket", "delivery", "phone case",
            "desk chair", "novel", "coffee maker", "backpack", "vacuum cleaner", "tent", "running shoes",
            "keyboard", "restaurant", "hair dryer", "suitcase", "printer", "mattress", "water bottle", "lamp",
            "bicycle", "camera", "sofa", "toaster", "watch", "umbrella", "monitor", "kettle", "rental car"]
TEMPLATES = [
    "The {product} was {a}.",
    "I found the {product} {a} and {b}.",
    "{A} {product}, and honestly {b} too.",
    "Bought the {product} last week. It is {a}.",
    "My {product} arrived today: {a}, {b}.",
    "Two words for this {product}: {a} and {b}.",
]
SENTIMENT_PROMPT = "Classify the sentiment of this review as positive or negative. Answer with one word.\n\nReview: {review}"
CAPITAL_PROMPT = "What is the capital of {country}? Answer with the city name only."


def capital_pairs(countries: list[str], rng: random.Random, per_country: int) -> list[dict]:
    kinds = ["wrong", "verbose", "wrong", "format"]
    rows = []
    for index, country in enumerate(countries):
        city = CAPITALS[country]
        for repeat in range(per_country):
            kind = kinds[(index * per_country + repeat) % len(kinds)]
            if kind == "wrong":
                rejected = CAPITALS[rng.choice([c for c in CAPITALS if CAPITALS[c] != city])]
            elif kind == "verbose":
                rejected = f"The capital of {country} is {city}."
            else:
                rejected = f"{city} (I think)."
            rows.append({
                "prompt": [{"role": "user", "content": CAPITAL_PROMPT.format(country=country)}],
                "chosen": [{"role": "assistant", "content": city}],
                "rejected": [{"role": "assistant", "content": rejected}],
            })
    return rows


def review(product: str, label: str, rng: random.Random) -> str:
    words = POSITIVE if label == "positive" else NEGATIVE
    a, b = rng.sample(words, 2)
    return rng.choice(TEMPLATES).format(product=product, a=a, b=b, A=a.capitalize())


def sentiment_rows(products: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    return [(review(rng.choice(products), label, rng), label) for label in ("positive", "negative") * (n // 2)]


def sentiment_pairs(rows: list[tuple[str, str]]) -> list[dict]:
    kinds = ["wrong", "verbose", "wrong", "format"]
    pairs = []
    for index, (text, label) in enumerate(rows):
        other = "negative" if label == "positive" else "positive"
        kind = kinds[(index // 2) % len(kinds)]
        rejected = {"wrong": other, "verbose": f"The sentiment is {label}.", "format": f"{label.capitalize()}!"}[kind]
        pairs.append({
            "input": {"messages": [{"role": "user", "content": SENTIMENT_PROMPT.format(review=text)}]},
            "preferred_output": [{"role": "assistant", "content": label}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        })
    return pairs


def chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {path}")


def main(out: Path) -> None:
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    countries = sorted(CAPITALS)
    rng.shuffle(countries)
    train_countries, test_countries = countries[:110], countries[110:]
    write(out / "capitals_train.jsonl", capital_pairs(train_countries, rng, per_country=2))
    write(out / "capitals_test.jsonl", capital_pairs(test_countries, rng, per_country=1))
    write(out / "capitals_train_chat.jsonl",
          [chat(CAPITAL_PROMPT.format(country=c), CAPITALS[c]) for c in train_countries])
    write(out / "capitals_test_chat.jsonl",
          [chat(CAPITAL_PROMPT.format(country=c), CAPITALS[c]) for c in test_countries])

    products = PRODUCTS[:]
    rng.shuffle(products)
    train_products, test_products = products[:22], products[22:]
    train_rows, test_rows = sentiment_rows(train_products, 220, rng), sentiment_rows(test_products, 60, rng)
    write(out / "sentiment_train.jsonl", sentiment_pairs(train_rows))
    write(out / "sentiment_test.jsonl", sentiment_pairs(test_rows))
    write(out / "sentiment_train_chat.jsonl", [chat(SENTIMENT_PROMPT.format(review=t), label) for t, label in train_rows])
    write(out / "sentiment_test_chat.jsonl", [chat(SENTIMENT_PROMPT.format(review=t), label) for t, label in test_rows])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "short_answer_tasks"))
