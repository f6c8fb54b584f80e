# Regenerate with: python llem_mlflow/bench/data/make_prompts.py llem_mlflow/bench/data/prompts.jsonl
"""Writes llem_mlflow/bench/data/prompts.jsonl: prompts written for llem-mlflow.

Short questions, instructions of middle length, and long prompts that embed a
passage written for this project, so input lengths vary from a few words to a
few hundred. Deterministic (fixed seed)."""
import json
import random
import sys

rng = random.Random(2024)

topics = [
    "photosynthesis", "the water cycle", "plate tectonics", "black holes", "the French Revolution",
    "the printing press", "vaccines", "compound interest", "supply and demand", "the immune system",
    "machine learning", "public key cryptography", "the Roman Empire", "climate change", "coral reefs",
    "the human heart", "volcanoes", "the stock market", "renewable energy", "the internet",
    "jazz music", "the Renaissance", "honeybees", "glaciers", "electric cars", "sleep",
    "the Silk Road", "quantum computing", "composting", "the Moon landing", "antibiotics",
    "urban gardening", "the Industrial Revolution", "tides", "solar panels", "bread baking",
    "the periodic table", "rainforests", "inflation", "chess openings", "migratory birds",
    "3D printing", "the Great Wall of China", "earthquakes", "recycling plastics", "DNA",
]

short_templates = [
    "What is {t}?",
    "Explain {t} in one sentence.",
    "Give me three facts about {t}.",
    "Why does {t} matter?",
    "Define {t} for a ten-year-old.",
    "What is the most common misconception about {t}?",
    "Who first studied {t}?",
    "Name two books about {t}.",
]

medium_templates = [
    "Write a short paragraph explaining {t} to a high school student, using one everyday analogy.",
    "List the five most important ideas someone should understand about {t}, with a sentence on each.",
    "Compare {t} with {u}. What do they have in common, and where do they differ most?",
    "You are a museum guide. Describe an exhibit about {t} in a friendly, engaging tone for families.",
    "Draft an email to a colleague proposing a lunchtime talk on {t}. Keep it under 120 words.",
    "Write a haiku about {t}, then explain the imagery you chose.",
    "Create a quiz of four multiple-choice questions about {t}, and mark the correct answers.",
    "Summarise the history of {t} in a timeline of six key moments.",
    "What are the main open questions researchers still have about {t}? Answer in a numbered list.",
    "Pretend you are writing a children's book. Write the opening page of a story that teaches {t}.",
    "Explain how {t} affects everyday life in a small coastal town, with two concrete examples.",
    "Argue for and against spending public money on research into {t}, one paragraph each.",
]

instructions = [
    "Translate the following sentence into French: 'The library opens at nine and closes at six.'",
    "Rewrite this sentence in the passive voice: 'The committee approved the new budget on Tuesday.'",
    "Sort these numbers from smallest to largest: 42, 7, 19, 3, 88, 25.",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Write a SQL query that counts orders per customer in a table named orders.",
    "Correct the grammar: 'Me and him goes to the market every days.'",
    "Give a recipe for a simple vegetable soup that serves four people.",
    "Suggest five names for a bakery that specialises in sourdough bread.",
    "Convert 72 degrees Fahrenheit to Celsius and show the steps.",
    "Write a limerick about a cat who learns to play the piano.",
    "Plan a three-day walking trip in the mountains for a beginner, day by day.",
    "Explain the difference between a list and a tuple in Python.",
    "What is 17 multiplied by 23? Show your working.",
    "Write a polite message declining a meeting invitation because of a scheduling conflict.",
    "Describe the smell of rain to someone who has never experienced it.",
    "Give three tips for writing clear technical documentation.",
    "Write a regular expression that matches a date in the form YYYY-MM-DD.",
    "Outline a weekly study plan for learning basic Spanish in three months.",
    "Explain what a hash table is and when you would use one.",
    "Write the opening line of a mystery novel set in a lighthouse.",
    "Summarise the plot of a story in which a robot learns to garden.",
    "List the planets of the solar system in order from the Sun.",
    "If a train leaves at 14:20 and the journey takes 2 hours 55 minutes, when does it arrive?",
    "Write a short motivational note for someone running their first marathon.",
    "Explain recursion using an example that does not involve code.",
    "Describe how to change a flat bicycle tyre, step by step.",
    "What are the pros and cons of working from home? Answer in two short lists.",
    "Write a product description for a waterproof hiking backpack.",
    "Give a one-paragraph review of an imaginary restaurant called The Copper Kettle.",
    "Explain the rules of tic-tac-toe as if to someone who has never played a game.",
    "Hi!",
    "Tell me a joke.",
    "Continue the sequence: 2, 4, 8, 16,",
    "Say hello in five languages.",
    "Is a tomato a fruit or a vegetable?",
    "How many minutes are there in a week?",
]

passages = [
    ("a town council meeting",
     "The council of Millbrook met on Thursday evening to discuss the future of the old railway station. "
     "Several residents argued that the building should become a community library, pointing out that the "
     "nearest library is forty minutes away by bus. Others preferred to sell the site to a developer who "
     "has offered to build twenty affordable homes and a small park. The treasurer warned that repairing the "
     "roof alone would cost more than the town's entire maintenance budget for the year. After two hours of "
     "debate the council agreed to run a public survey before making any decision, with results due in spring."),
    ("a laboratory report",
     "In this experiment we measured how the temperature of water affects the time needed to dissolve a "
     "sugar cube. We prepared five beakers at 10, 25, 40, 55 and 70 degrees Celsius and dropped a standard "
     "cube into each without stirring. The cube in the coldest beaker took just over eleven minutes to "
     "dissolve completely, while the cube at 70 degrees dissolved in under two minutes. The relationship was "
     "not linear: the largest improvement came between 25 and 40 degrees. We repeated each measurement three "
     "times and the results varied by less than fifteen seconds, which suggests the method is reliable."),
    ("a customer complaint",
     "I ordered a blue winter coat in size medium from your online shop on the third of the month. The parcel "
     "arrived a week late and contained a green coat in size large. I contacted customer service twice by email "
     "and once by phone, and each time I was promised a replacement within five working days. It has now been "
     "three weeks and I have received nothing, not even a return label for the wrong item. I would like either "
     "the correct coat delivered by Friday or a full refund, including the delivery charge I paid."),
    ("a short story opening",
     "Nadia had lived above the clock repair shop for eleven years, and in all that time the old man downstairs "
     "had never once been late opening the shutters. So when she came down on Monday morning and found the shop "
     "dark, the door locked and every clock in the window stopped at exactly ten past four, she knew something "
     "was wrong. She pressed her face to the glass. On the counter, beside a half-finished pocket watch, lay an "
     "envelope with her name written on it in careful, old-fashioned handwriting."),
    ("a product announcement",
     "Today we are introducing the Aria 2, a reading lamp designed for people who read late at night. The lamp "
     "uses a warm light that gradually dims over thirty minutes, so your eyes adjust as you prepare to sleep. "
     "A single touch on the base switches between three brightness levels, and the flexible neck lets you point "
     "the light exactly where you need it. The battery lasts up to forty hours on the lowest setting and charges "
     "fully in two hours over a standard USB-C cable. The Aria 2 is available in oak, walnut and grey."),
    ("a history lesson",
     "In the late eighteenth century, most goods in Britain were still made by hand in small workshops or at home. "
     "Within a few decades, new machines powered first by water and then by steam moved production into large "
     "factories. Towns such as Manchester grew at astonishing speed, and workers moved from the countryside in "
     "search of regular wages. Conditions in early factories were often harsh: long hours, dangerous machinery and "
     "child labour were common. Over the following century, reform movements and new laws slowly improved safety "
     "and limited working hours, laying foundations for modern labour rights."),
    ("a software incident report",
     "At 02:14 UTC the payment service began returning errors for about thirty percent of requests. The on-call "
     "engineer was paged at 02:16 and found that a configuration change deployed the previous evening had reduced "
     "the database connection pool from fifty connections to five. Under the normal night-time load the pool was "
     "exhausted, so new requests timed out while waiting for a connection. The change was rolled back at 02:41 and "
     "error rates returned to normal within three minutes. No payments were lost, but about four thousand customers "
     "saw an error message and had to retry."),
    ("a travel diary",
     "We reached the village just before sunset, after six hours on a bus that stopped at every farm along the "
     "valley road. The guesthouse was a stone building with a blue door and a garden full of lemon trees. Our host, "
     "an elderly woman named Elena, insisted that we eat with her family, and we sat at a long table under a vine "
     "while her grandchildren translated her stories about the village in the years before the road was built. "
     "Later we walked up to the chapel on the hill and watched the lights of the coast appear one by one."),
]
passage_tasks = [
    "Summarise the following text in two sentences.\n\n{p}",
    "Read the text below and list every number it mentions, with what each number refers to.\n\n{p}",
    "Here is {d}:\n\n{p}\n\nWrite three questions a reader might ask after reading it.",
    "Rewrite the following text in a formal tone, keeping all the facts.\n\n{p}",
    "What is the main problem described in this text, and what would you suggest doing next?\n\n{p}",
    "Translate the key points of this text into a bulleted list of at most five items.\n\n{p}",
    "Continue this text with one more paragraph in the same style.\n\n{p}",
]

prompts = []
for t in topics:
    prompts.append(rng.choice(short_templates).format(t=t))
    u = rng.choice([x for x in topics if x != t])
    prompts.append(rng.choice(medium_templates).format(t=t, u=u))
prompts += instructions
for d, p in passages:
    for task in rng.sample(passage_tasks, 4):
        prompts.append(task.format(d=d, p=p))
# A second pass of different templates on a sample of topics to reach > 200 distinct prompts.
for t in rng.sample(topics, 30):
    s = rng.choice(short_templates).format(t=t)
    if s not in prompts:
        prompts.append(s)
while len(prompts) < 220:
    t, u = rng.sample(topics, 2)
    m = rng.choice(medium_templates).format(t=t, u=u)
    if m not in prompts:
        prompts.append(m)
# Very long prompts: two passages together.
for a, b in [(0, 2), (1, 6), (3, 7), (4, 5)]:
    prompts.append("Compare the tone and purpose of these two texts.\n\nText A:\n" + passages[a][1]
                   + "\n\nText B:\n" + passages[b][1])
assert len(set(prompts)) == len(prompts)
rng.shuffle(prompts)
with open(sys.argv[1], "w") as f:
    for p in prompts:
        f.write(json.dumps({"prompt": p}) + "\n")
print(len(prompts), min(map(len, prompts)), max(map(len, prompts)))
