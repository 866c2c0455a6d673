"""Writes rlhf_lab/reviews/prompts.jsonl, the reviews task's prompts (run once; the JSONL file is the source of
truth and is committed).

Each of 100 subjects is asked about with 4 of 8 templates (subject i takes templates i, i+1, i+2, i+3 mod 8).
Every 5th subject (all 4 of its prompts) is held out, so the held-out split asks about subjects PPO never saw:
320 train prompts, 80 held-out ones.
"""

import json
from pathlib import Path

TEMPLATES = (  # each asks for a sentence or a few words: most answers end within ppo.max_new_tokens
    "Write a one-sentence review of {}.",
    "Describe what you like about {} in a few words.",
    "Describe {} in one short sentence.",
    "Give a one-sentence opinion of {}.",
    "In one sentence, tell a friend about {}.",
    "Write a short, one-sentence recommendation of {}.",
    "What do you think of {}? Answer in one sentence.",
    "Sum up {} in a few words.",
)

SUBJECTS = (
    # gadgets and electronics
    "a pair of noise-cancelling headphones", "a budget smartphone", "an e-book reader", "a fitness tracker",
    "a mechanical keyboard", "a portable Bluetooth speaker", "a robot vacuum cleaner", "a digital camera",
    "a smartwatch", "a gaming laptop", "a tablet for drawing",
    # home and kitchen
    "a cast-iron frying pan", "an espresso machine", "a slow cooker", "a wool blanket", "a standing desk",
    "a houseplant that is easy to care for", "a set of kitchen knives", "a reading lamp", "a rice cooker",
    "a memory foam pillow",
    # food and drink
    "a bowl of ramen", "homemade lemonade", "a margherita pizza", "dark chocolate", "fresh sourdough bread",
    "a vegetable curry", "green tea", "a blueberry muffin", "a Greek salad", "a cup of hot cocoa",
    "apple pie", "a breakfast of pancakes", "a fruit smoothie", "grilled salmon",
    # places
    "a small seaside town", "a city park in autumn", "a local farmers' market", "a quiet public library",
    "a mountain hiking trail", "a neighbourhood coffee shop", "a science museum", "a botanical garden",
    "a lakeside campsite", "an old bookshop", "a night market", "a beach at sunrise", "a ski resort",
    "a family-run Italian restaurant",
    # books
    "a mystery novel", "a science fiction novel", "a cookbook for beginners", "a collection of short stories",
    "a travel memoir", "a fantasy series for young readers", "a popular science book", "a book of poems",
    "a graphic novel", "a biography of a famous inventor",
    # films, shows, music
    "an animated family film", "a nature documentary", "a romantic comedy", "a classic western",
    "a space adventure film", "a cooking show", "a live jazz concert", "a musical theatre performance",
    "a podcast about history", "an acoustic folk album",
    # services and transport
    "a food delivery service", "a local bike repair shop", "an online language course", "a music streaming service",
    "a neighbourhood gym", "a hotel with a sea view", "a long-distance train journey",
    "a dog grooming salon", "a public swimming pool",
    # hobbies and activities
    "learning to knit", "birdwatching", "growing tomatoes on a balcony", "playing chess", "rock climbing",
    "baking bread at home", "learning the guitar", "jigsaw puzzles", "watercolour painting", "cycling to work",
    "yoga in the morning", "photography walks", "board game nights", "keeping a journal",
    # everyday things and experiences
    "a good pair of running shoes", "a waterproof rain jacket", "a sturdy backpack", "a fountain pen",
    "a weekend road trip", "a picnic in the park", "a rainy Sunday afternoon", "a summer music festival",
)


def prompts() -> list[dict]:
    rows = []
    for i, subject in enumerate(SUBJECTS):
        split = "held_out" if i % 5 == 4 else "train"
        rows += [{"prompt": TEMPLATES[(i + k) % len(TEMPLATES)].format(subject), "split": split} for k in range(4)]
    return rows


if __name__ == "__main__":
    path = Path(__file__).resolve().parent.parent / "rlhf_lab" / "reviews" / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in prompts()))
    print(f"wrote {path}")
