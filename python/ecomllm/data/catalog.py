"""The bundled catalogue: a seeded generator of realistic, learnable e-commerce data.

The project must work offline with nothing downloaded, so `make demo` trains its tokenizer, its
small base model and its QLoRA fine-tune on data made here. Everything below is written in this
project from hand-made word tables; no published data is copied.

What it makes (:func:`generate_catalog`):

* A taxonomy of Google-Product-Taxonomy-like paths ("Home & Garden > Kitchen & Dining > Cookware >
  Frying Pans"): 17 top-level branches, depth 2-4, 522 leaves, from compact tables
  (branch, sub-path, profile, leaves).
* Products (:class:`~ecomllm.data.schema.Product`). Each leaf has a *profile*: its attribute
  schema (4-8 of 36 attribute types, Brand first -> ``meta["attribute_keys"]``), the keys that
  go into titles, value pools, yes/no claims ("dishwasher safe") and extras ("w/ Lid"). Values
  come with unit variants ("500 ml" / "0.5L" / "500ML"; '15.6"' / "15.6-inch"), colour synonyms
  ("Jet Black" is black) and model numbers ("XR-2041B"). Titles are brand + key attributes + the
  leaf noun (so the category is recoverable from the title) with real-world noise: marketing
  words, "w/", "pk", "Blk", random order and separators. About a fifth of the schema attributes
  are left out of the text entirely (extraction answers ``n/a`` for them).
  Paragraphs are the title, a description and one paragraph per feature bullet (MAVE sources
  "title" / "description" / "feature"); ``spans`` locate every mention of every stated attribute
  exactly (``paragraphs[pid].text[begin:end] == value``); ``attributes[key]`` is that surface
  form, the same in every mention, so extraction can copy it. ``meta["canonical"]`` holds the
  normalised value (colour family, "500 ml"), ``meta["claims"]`` the stated yes/no facts.
* Questions (:class:`~ecomllm.data.schema.QAItem`) grounded in the product's own sentences:
  descriptive ("What is the capacity?" -> "It holds 1.5 L."), yes/no on values and claims
  ("Does it come in black?", "Is it dishwasher safe?") and unanswerable ones whose evidence is
  silent (answer :data:`~ecomllm.data.schema.UNANSWERABLE_ANSWER`, ``answerable=False``).
* A small general-instruction set (:class:`~ecomllm.data.schema.Example`, task GENERAL_TASK):
  unit conversions, arithmetic, title case, lists, shopping-term definitions, polite replies.

Everything is deterministic by seed (one ``random.Random``; no set or hash ordering is used).
:func:`write_catalog` writes taxonomy.txt (Google format), products.mave.jsonl (MAVE schema),
products.jsonl / qa.jsonl / general.jsonl (schema dicts) atomically; :func:`read_catalog` reads
them back; :func:`pretraining_corpus` gives plain text lines for tokenizer and base-model training.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

from .formats import load_google_taxonomy, load_records
from .schema import (CATEGORY_SEPARATOR, DataError, Example, GENERAL_TASK, Paragraph, AttributeSpan, Product,
                     QAItem, UNANSWERABLE_ANSWER, to_dict)

TAXONOMY_VERSION_LINE = "# ecomllm_Bundled_Taxonomy_Version: 1"
SOURCE = "bundled"

# ---------------------------------------------------------------------------------------------
# Word tables
# ---------------------------------------------------------------------------------------------

# Colour family -> surface forms. The family is the canonical value ("Does it come in black?").
COLORS = {
    "black": ["Black", "Jet Black", "Midnight Black", "Onyx", "Matte Black"],
    "white": ["White", "Snow White", "Ivory", "Pearl White"],
    "grey": ["Grey", "Gray", "Charcoal", "Slate Grey", "Space Gray"],
    "blue": ["Blue", "Navy", "Navy Blue", "Royal Blue", "Sky Blue", "Cobalt"],
    "red": ["Red", "Crimson", "Cherry Red", "Burgundy"],
    "green": ["Green", "Olive", "Forest Green", "Sage", "Mint Green"],
    "pink": ["Pink", "Blush", "Rose Pink", "Hot Pink"],
    "brown": ["Brown", "Espresso", "Tan", "Walnut Brown"],
    "beige": ["Beige", "Cream", "Khaki", "Sand"],
    "silver": ["Silver", "Chrome Silver", "Platinum"],
    "gold": ["Gold", "Rose Gold", "Champagne Gold"],
    "purple": ["Purple", "Violet", "Plum"],
    "yellow": ["Yellow", "Mustard", "Lemon Yellow"],
    "orange": ["Orange", "Coral", "Burnt Orange"],
}
COLOR_ABBREVIATIONS = {"Black": "Blk", "White": "Wht", "Grey": "Gry", "Gray": "Gry", "Silver": "Slvr"}

# Material pools, named so profiles can share them.
MATERIALS = {
    "cookware": ["Stainless Steel", "Cast Iron", "Aluminum", "Carbon Steel", "Hard-Anodized Aluminum", "Copper",
                 "Ceramic"],
    "kitchen": ["Stainless Steel", "Silicone", "Bamboo", "Plastic", "Glass", "Wood", "Nylon"],
    "drink": ["Stainless Steel", "Glass", "Tritan Plastic", "Ceramic", "Borosilicate Glass", "Porcelain"],
    "fabric": ["Cotton", "Polyester", "Linen", "Wool", "Cotton Blend", "Rayon", "Organic Cotton", "Bamboo Viscose",
               "Fleece"],
    "bedding": ["Cotton", "Egyptian Cotton", "Microfiber", "Linen", "Bamboo Viscose", "Flannel", "Sateen"],
    "shoe": ["Leather", "Suede", "Mesh", "Canvas", "Synthetic", "Rubber", "Knit"],
    "jewelry": ["Sterling Silver", "14K Gold", "Stainless Steel", "Titanium", "Brass", "Gold-Plated Brass"],
    "wood": ["Solid Wood", "Oak", "Walnut", "Pine", "MDF", "Rattan", "Bamboo", "Metal", "Engineered Wood"],
    "metal": ["Steel", "Aluminum", "Stainless Steel", "Zinc Alloy", "Brass", "Carbon Steel", "Iron"],
    "plastic": ["ABS Plastic", "Polypropylene", "Silicone", "Nylon", "Polycarbonate", "Rubber"],
    "decor": ["Ceramic", "Glass", "Metal", "Wood", "Resin", "Cotton", "Jute", "Velvet"],
    "bag": ["Nylon", "Polyester", "Leather", "Canvas", "Polycarbonate", "ABS Plastic", "Vegan Leather"],
    "craft": ["Wood", "Paper", "Acrylic", "Cotton", "Plastic", "Nylon", "Canvas"],
    "sport": ["Rubber", "PVC", "Neoprene", "Synthetic Leather", "Aluminum", "Carbon Fiber", "Foam", "TPE"],
    "toy": ["Plastic", "Wood", "Plush", "ABS Plastic", "Silicone", "Cardboard"],
}

SIZES = {
    "apparel": ["XS", "S", "M", "L", "XL", "XXL", "Small", "Medium", "Large", "X-Large"],
    "bed": ["Twin", "Twin XL", "Full", "Queen", "King", "California King"],
    "generic": ["Small", "Medium", "Large", "Extra Large", "Mini", "Compact"],
    "kids": ["2T", "3T", "4T", "5-6 Years", "7-8 Years", "Newborn", "0-3 Months", "6-12 Months"],
    "paper": ["Letter", "Legal", "A4", "A5", "8.5 x 11 in"],
    "ball": ["Size 3", "Size 4", "Size 5", "Official Size", "Youth Size"],
}
SHOE_SIZES = ["6", "6.5", "7", "7.5", "8", "8.5", "9", "9.5", "10", "10.5", "11", "12"]

# Free pools for the attributes that have no units.
POOLS = {
    "Pattern": ["Solid", "Striped", "Plaid", "Floral", "Polka Dot", "Geometric", "Camo", "Paisley", "Checkered",
                "Herringbone"],
    "Fit": ["Slim Fit", "Regular Fit", "Relaxed Fit", "Skinny Fit", "Loose Fit", "Athletic Fit"],
    "Sleeve Length": ["Short Sleeve", "Long Sleeve", "Sleeveless", "3/4 Sleeve", "Cap Sleeve"],
    "Gender": ["Men's", "Women's", "Unisex", "Boys'", "Girls'"],
    "Flavor": ["Vanilla", "Chocolate", "Strawberry", "Sea Salt", "BBQ", "Mint", "Lemon", "Original", "Honey",
               "Cinnamon", "Sour Cream & Onion", "Peanut Butter", "Caramel", "Mixed Berry"],
    "Scent": ["Lavender", "Vanilla", "Fresh Linen", "Ocean Breeze", "Eucalyptus", "Citrus", "Rose",
              "Sandalwood", "Coconut", "Green Tea"],
    "Connectivity": ["Bluetooth 5.3", "Bluetooth 5.0", "Wi-Fi", "USB-C", "Wireless", "Wired", "2.4GHz Wireless",
                     "Wi-Fi 6", "NFC"],
    "Power Source": ["Battery Powered", "Corded Electric", "USB Rechargeable", "Solar Powered", "AC Adapter",
                     "Manual"],
    "Finish": ["Matte", "Glossy", "Brushed", "Satin", "Polished", "Powder Coated", "Oil-Rubbed Bronze",
               "Brushed Nickel"],
    "Style": ["Modern", "Classic", "Vintage", "Farmhouse", "Minimalist", "Industrial", "Casual", "Sporty", "Boho",
              "Mid-Century"],
    "Shape": ["Round", "Square", "Rectangular", "Oval", "Hexagonal", "Heart"],
    "Resolution": ["4K UHD", "1080p", "1440p", "8K", "720p", "2.7K", "5K"],
    "Processor": ["Octa-Core 3.2 GHz", "Quad-Core 2.4GHz", "6-Core 2.8 GHz", "10-Core 3.6GHz", "Dual-Core 1.8 GHz"],
    "Skin Type": ["All Skin Types", "Dry Skin", "Oily Skin", "Sensitive Skin", "Combination Skin"],
    "Age Group": ["Adult", "Kids", "Toddler", "Teen", "Baby"],
}
TOY_AGES = ["Ages 3+", "Ages 5+", "8-12 Years", "3 Years & Up", "Ages 6-10", "18 Months+", "Ages 14+"]
PET_AGES = ["Puppy", "Adult", "Senior", "All Life Stages", "Kitten"]

# Per-branch invented brand names.
BRANDS = {
    "Animals & Pet Supplies": ["Pawlisle", "Whiskerly", "Barkwood", "FurNest", "Tailtide", "Petmoor"],
    "Apparel & Accessories": ["Northvale", "Loomly", "Threadwell", "Maren & Co", "Urbanfold", "Kestrel Lane",
                              "Solstead"],
    "Arts & Entertainment": ["Brushcraft", "Tonewell", "Arteza Fox", "Melodon", "Partyvine", "Canvasly"],
    "Baby & Toddler": ["Cuddlebee", "Nestling", "Tinytrek", "Lullamoon", "Babbo"],
    "Business & Industrial": ["Ironclad Pro", "Safeline", "Workmate", "Duraforce", "Stackwell"],
    "Cameras & Optics": ["Lumora", "Optivex", "Shutterline", "Focalis", "Vantix"],
    "Electronics": ["Voltiq", "Zentro", "Auralink", "Novatek", "Pixelon", "Corvana", "Sonique", "Qubix"],
    "Food & Beverages": ["Harvest Lane", "Crunchwell", "Golden Grove", "Brewmont", "Snackery", "Maple & Oak"],
    "Furniture": ["Oakhaven", "Loftline", "Nordholm", "Casaverde", "Restwell", "Birchfield"],
    "Hardware": ["Toolvik", "Boltman", "Gripforce", "Hammerstone", "Torqline", "Fixwell"],
    "Health & Beauty": ["Glowrie", "Purelle", "Dermavie", "Silkroot", "Vitalis", "Bellamint"],
    "Home & Garden": ["Kitchora", "Homestead Co", "Cozynest", "Brightwell", "Gardenia Works", "Panora", "Lumenhall",
                      "Verdance"],
    "Luggage & Bags": ["Roamwell", "Jetpack Co", "Trekmate", "Carryon Lab", "Wanderlux"],
    "Office Supplies": ["Penmark", "Deskwise", "Inkwell", "Paperoo", "Officio"],
    "Sporting Goods": ["Peakform", "Trailhead", "Aquafin", "Strideon", "Summitra", "Fitcore"],
    "Toys & Games": ["Playmore", "Brickly", "Toytopia", "Funforge", "Wonderkin"],
    "Vehicles & Parts": ["Roadmaster X", "Autovia", "Drivex", "Motorline", "Gearhub"],
}

MARKETING = ["NEW", "New", "Premium", "2024 Edition", "2025 Model", "Best Seller", "Upgraded", "HOT SALE", "Deluxe",
             "Professional", "Limited Edition", "Heavy Duty", "[Latest Version]", "Top Rated", "Original"]
FILLERS = ["A great gift idea.", "Ships in recyclable packaging.", "Loved by thousands of customers.",
           "Our support team is available seven days a week.", "Order today for fast delivery.",
           "Satisfaction guaranteed.", "Designed in-house by our product team.", "Makes a thoughtful present."]

# Yes/no facts a product may state: questions, sentences that state it, sentences that deny it
# (empty: never denied, only stated or silent), and the two answers.
CLAIMS = {
    "dishwasher": (["Is it dishwasher safe?", "Can I put it in the dishwasher?"],
                   ["Dishwasher safe for easy cleanup.", "Dishwasher safe."],
                   ["Hand wash only.", "Not dishwasher safe; hand wash recommended."],
                   "Yes, it is dishwasher safe.", "No, it is not dishwasher safe."),
    "oven": (["Is it oven safe?", "Can it go in the oven?"], ["Oven safe up to 500°F."],
             ["Not suitable for oven use."], "Yes, it is oven safe.", "No, it is not oven safe."),
    "induction": (["Does it work on induction cooktops?", "Is it induction compatible?"],
                  ["Works on gas, electric and induction cooktops."], ["Not compatible with induction cooktops."],
                  "Yes, it works on induction cooktops.", "No, it does not work on induction cooktops."),
    "nonstick": (["Is it non-stick?", "Does it have a non-stick coating?"],
                 ["Non-stick coating releases food easily."], ["Uncoated surface; season before use."],
                 "Yes, it has a non-stick coating.", "No, it is uncoated."),
    "bpa": (["Is it BPA free?", "Is this BPA-free?"], ["Made with BPA-free materials.", "100% BPA free."], [],
            "Yes, it is BPA free.", "No, it is not BPA free."),
    "leakproof": (["Is it leak-proof?", "Is the lid leak-proof?"], ["Leak-proof lid keeps your bag dry."],
                  ["The lid is not leak-proof."], "Yes, it is leak-proof.", "No, it is not leak-proof."),
    "microwave": (["Is it microwave safe?", "Can I microwave it?"], ["Microwave safe."],
                  ["Do not use in the microwave."], "Yes, it is microwave safe.", "No, it is not microwave safe."),
    "machine_wash": (["Is it machine washable?", "Can I machine wash it?"],
                     ["Machine washable.", "Easy care: machine wash cold."],
                     ["Dry clean only."], "Yes, it is machine washable.", "No, it is dry clean only."),
    "waterproof": (["Is it waterproof?", "Can it get wet?"], ["Waterproof design keeps water out."],
                   ["Not waterproof; keep away from water."], "Yes, it is waterproof.", "No, it is not waterproof."),
    "anc": (["Does it have noise cancelling?", "Does it block outside noise?"],
            ["Active noise cancelling blocks outside sound."], ["Does not include active noise cancelling."],
            "Yes, it has active noise cancelling.", "No, it does not have noise cancelling."),
    "mic": (["Does it have a built-in microphone?", "Can I take calls with it?"],
            ["Built-in microphone for hands-free calls."], ["There is no built-in microphone."],
            "Yes, it has a built-in microphone.", "No, it has no built-in microphone."),
    "batteries": (["Are batteries included?", "Does it come with batteries?"], ["Batteries included."],
                  ["Batteries not included."], "Yes, batteries are included.", "No, batteries are not included."),
    "assembly": (["Does it require assembly?", "Do I need to assemble it?"], ["Assembly required; tools included."],
                 ["Arrives fully assembled."], "Yes, assembly is required.", "No, it arrives fully assembled."),
    "gluten_free": (["Is it gluten free?", "Does it contain gluten?"], ["Certified gluten free."],
                    ["Contains wheat and gluten."], "Yes, it is gluten free.", "No, it contains gluten."),
    "vegan": (["Is it vegan?", "Is this vegan friendly?"], ["100% vegan, no animal ingredients."],
              ["Contains milk and eggs."], "Yes, it is vegan.", "No, it is not vegan."),
    "organic": (["Is it organic?", "Is this organic?"], ["Made with certified organic ingredients."], [],
                "Yes, it is organic.", "No, it is not organic."),
    "sugar_free": (["Is it sugar free?", "Is this sugar-free?"], ["Sugar free, sweetened with stevia."],
                   ["Contains added sugar."], "Yes, it is sugar free.", "No, it contains added sugar."),
    "caffeine": (["Does it contain caffeine?", "Is there caffeine in it?"], ["Contains natural caffeine."],
                 ["Naturally caffeine free."], "Yes, it contains caffeine.", "No, it is caffeine free."),
    "cruelty_free": (["Is it cruelty free?", "Is this cruelty-free?"], ["Cruelty-free, never tested on animals."],
                     [], "Yes, it is cruelty free.", "No, it is not cruelty free."),
    "fragrance_free": (["Is it fragrance free?", "Is it unscented?"], ["Fragrance-free formula."],
                       ["Lightly fragranced formula."], "Yes, it is fragrance free.", "No, it is lightly fragranced."),
    "dimmable": (["Is it dimmable?", "Can I dim it?"], ["Dimmable with standard dimmer switches."],
                 ["Not dimmable."], "Yes, it is dimmable.", "No, it is not dimmable."),
    "cordless": (["Is it cordless?", "Does it work without a cord?"], ["Cordless design for freedom of movement."],
                 ["Corded; requires a wall outlet."], "Yes, it is cordless.", "No, it is corded."),
    "remote": (["Does it come with a remote?", "Is a remote control included?"], ["Remote control included."],
               ["Remote control sold separately."], "Yes, a remote control is included.",
               "No, the remote control is sold separately."),
    "foldable": (["Is it foldable?", "Does it fold?"], ["Folds flat for easy storage."], ["Does not fold."],
                 "Yes, it folds flat.", "No, it does not fold."),
    "adjustable": (["Is it adjustable?", "Can I adjust it?"], ["Adjustable to fit most users."],
                   ["Fixed, non-adjustable design."], "Yes, it is adjustable.", "No, it is not adjustable."),
    "tsa": (["Does it have a TSA lock?", "Is there a TSA-approved lock?"], ["Built-in TSA-approved lock."],
            ["No built-in lock."], "Yes, it has a TSA-approved lock.", "No, it has no built-in lock."),
    "slip": (["Is it slip-resistant?", "Does it have a non-slip sole?"], ["Slip-resistant rubber sole."],
             ["Smooth sole, not slip-resistant."], "Yes, it is slip-resistant.", "No, it is not slip-resistant."),
    "auto_off": (["Does it have auto shut-off?", "Does it turn off automatically?"],
                 ["Automatic shut-off for safety."], ["No automatic shut-off."],
                 "Yes, it has automatic shut-off.", "No, it has no automatic shut-off."),
    "hypoallergenic": (["Is it hypoallergenic?", "Is it good for allergies?"],
                       ["Hypoallergenic and gentle on sensitive skin."], [],
                       "Yes, it is hypoallergenic.", "No, it is not hypoallergenic."),
    "warranty": (["Does it come with a warranty?", "Is there a warranty?"], ["Backed by a 2-year warranty."],
                 ["Sold without a warranty."], "Yes, it has a 2-year warranty.", "No, it has no warranty."),
}

# Attribute types: key -> (default value spec, description sentence templates, questions, answer).
# A value spec is (kind, argument) for _make_value; profiles override it per category.
ATTRIBUTES = {
    "Brand": (("brand", None), ["Designed by {v}."], ["Who makes it?", "What brand is it?"], "It is made by {v}."),
    "Color": (("color", None), ["Finished in {v}.", "This one comes in {v}."],
              ["What color is it?", "What colour is it?"],
              "It comes in {v}."),
    "Size": (("size", "generic"), ["Size: {v}.", "Available here in size {v}."], ["What size is it?"],
             "The size is {v}."),
    "Material": (("pool", MATERIALS["plastic"]), ["Made of {v}.", "Crafted from durable {v}."],
                 ["What is it made of?", "What material is it?"], "It is made of {v}."),
    "Capacity": (("liter", (1.0, 6.0, 0.5)), ["It holds {v}.", "Capacity of {v}."],
                 ["What is the capacity?", "How much does it hold?"], "It holds {v}."),
    "Volume": (("ml", (30, 500, 10)), ["Contains {v}.", "Net volume {v}."], ["How much product is in it?",
               "What is the volume?"], "It contains {v}."),
    "Weight": (("kg", (0.3, 5.0, 0.1)), ["It weighs {v}.", "Weighs just {v}."], ["How much does it weigh?",
               "What is the weight?"], "It weighs {v}."),
    "Dimensions": (("dims", (20, 80)), ["It measures {v}.", "Overall dimensions: {v}."], ["What are the dimensions?",
                   "How big is it?"], "It measures {v}."),
    "Wattage": (("watts", [600, 800, 1000, 1200, 1500, 1800]), ["Powered by a {v} motor.", "Rated at {v}."],
                ["What is the wattage?", "How powerful is it?"], "It is rated at {v}."),
    "Voltage": (("volts", [120, 220, 240]), ["Runs on {v}.", "Operating voltage: {v}."], ["What voltage does it use?"],
                "It runs on {v}."),
    "Screen Size": (("inch", [6.1, 6.7, 10.9, 13.3, 14, 15.6, 17.3]), ["It has a {v} display.", "Screen size: {v}."],
                    ["How big is the screen?", "What is the screen size?"], "The screen measures {v}."),
    "Storage": (("gb", [64, 128, 256, 512, 1024, 2048]), ["Storage: {v}.", "Plenty of room with {v} of storage."],
                ["How much storage does it have?"], "It has {v} of storage."),
    "RAM": (("ram", [4, 8, 16, 32, 64]), ["Memory: {v} RAM.", "Runs smoothly with {v} of RAM."],
            ["How much RAM does it have?", "How much memory does it have?"], "It has {v} of RAM."),
    "Processor": (("pool", POOLS["Processor"]), ["Powered by an {v} processor.", "Processor: {v}."],
                  ["What processor does it have?"], "It has an {v} processor."),
    "Pack Quantity": (("pack", [2, 3, 4, 5, 6, 8, 10, 12, 24]), ["Sold as {v}.", "You get {v}."],
                      ["How many come in a pack?", "How many are included?"], "It comes as {v}."),
    "Piece Count": (("pieces", [24, 100, 250, 500, 1000, 1500]), ["Set includes {v}.", "Contains {v}."],
                    ["How many pieces are there?"], "It has {v}."),
    "Model Number": (("model", None), ["Model: {v}.", "Model number {v}."], ["What is the model number?"],
                     "The model number is {v}."),
    "Pattern": (("pool", POOLS["Pattern"]), ["Features a {v} pattern.", "Pattern: {v}."], ["What pattern is it?"],
                "The pattern is {v}."),
    "Fit": (("pool", POOLS["Fit"]), ["Cut in a {v}.", "Fit: {v}."], ["How does it fit?", "What is the fit?"],
            "It is a {v}."),
    "Sleeve Length": (("pool", POOLS["Sleeve Length"]), ["{v} design.", "Sleeve: {v}."], ["What is the sleeve length?",
                      "Does it have long or short sleeves?"], "It is {v}."),
    "Age Group": (("pool", POOLS["Age Group"]), ["Suitable for {v}.", "Recommended age: {v}."],
                  ["What age is it for?", "Who is it for?"], "It is for {v}."),
    "Gender": (("pool", POOLS["Gender"]), ["Made for {v} wear.", "Department: {v}."], ["Is it for men or women?"],
               "It is {v}."),
    "Flavor": (("pool", POOLS["Flavor"]), ["Delicious {v} flavor.", "Flavor: {v}."], ["What flavor is it?",
               "What does it taste like?"], "The flavor is {v}."),
    "Scent": (("pool", POOLS["Scent"]), ["Scent: {v}.", "A relaxing {v} scent."], ["What scent is it?",
              "What does it smell like?"], "The scent is {v}."),
    "Connectivity": (("pool", POOLS["Connectivity"]), ["Connects via {v}.", "Connectivity: {v}."],
                     ["How does it connect?", "What connectivity does it have?"], "It connects via {v}."),
    "Battery": (("mah", [1000, 2000, 3000, 4500, 5000, 10000, 20000]), ["Built-in {v} battery.", "Battery: {v}."],
                ["How big is the battery?", "What is the battery capacity?"], "The battery is {v}."),
    "Power Source": (("pool", POOLS["Power Source"]), ["Power source: {v}.", "It is {v}."], ["How is it powered?",
                     "What is the power source?"], "It is {v}."),
    "Finish": (("pool", POOLS["Finish"]), ["{v} finish.", "Finished with a {v} coat."], ["What finish does it have?"],
               "It has a {v} finish."),
    "Style": (("pool", POOLS["Style"]), ["{v} style fits any space.", "Style: {v}."], ["What style is it?"],
              "It is {v} style."),
    "Shape": (("pool", POOLS["Shape"]), ["Shape: {v}.", "A {v} shape."], ["What shape is it?"], "It is {v}."),
    "Length": (("length", (3, 25)), ["Length: {v}.", "It is {v} long."], ["How long is it?", "What is the length?"],
               "It is {v} long."),
    "Resolution": (("pool", POOLS["Resolution"]), ["Records in {v}.", "Resolution: {v}."], ["What is the resolution?"],
                   "The resolution is {v}."),
    "Thread Count": (("tc", [200, 300, 400, 600, 800, 1000]), ["Woven to {v}.", "Thread count: {v}."],
                     ["What is the thread count?"], "It has {v}."),
    "Weight Capacity": (("lbs", [150, 200, 250, 300, 350, 400, 500]), ["Supports up to {v}.", "Maximum load: {v}."],
                        ["How much weight can it hold?", "What is the weight limit?"], "It holds up to {v}."),
    "SPF": (("spf", [15, 30, 45, 50]), ["Broad spectrum {v} protection.", "Sun protection: {v}."],
            ["What SPF is it?"], "It is {v}."),
    "Skin Type": (("pool", POOLS["Skin Type"]), ["Formulated for {v}.", "Best for {v}."],
                  ["What skin type is it for?"], "It is for {v}."),
}
# Attributes whose yes/no question asks about a value ("Does it come in black?").
VALUE_QUESTIONS = {
    "Color": (["Does it come in {a}?", "Is it available in {a}?"], "Yes, it comes in {v}.", "No, it comes in {v}."),
    "Material": (["Is it made of {a}?", "Is this {a}?"], "Yes, it is made of {v}.", "No, it is made of {v}."),
    "Brand": (["Is this a {a} product?", "Is it made by {a}?"], "Yes, it is made by {v}.", "No, it is made by {v}."),
}


@dataclass(frozen=True)
class _Profile:
    """A family of leaf categories sharing an attribute schema.

    keys: the schema (Brand first), title: keys that go into titles, values: key -> value spec
    overriding ATTRIBUTES, claims: CLAIMS names, extras: "w/ ..." accessories, use: "for ..." phrase.
    """
    keys: tuple
    title: tuple
    values: dict
    claims: tuple
    extras: tuple
    use: str


def _p(keys: str, title: str, values=None, claims: str = "", extras: str = "", use: str = "") -> _Profile:
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    return _Profile(split(keys), split(title), dict(values or {}), tuple(claims.split()), split(extras), use)


_M = lambda name: ("pool", MATERIALS[name])  # noqa: E731
_S = lambda name: ("pool", SIZES[name])      # noqa: E731

PROFILES = {
    "pet_gear": _p("Brand, Size, Color, Material, Model Number, Dimensions", "Size, Color, Material",
                   {"Size": ("pool", SIZES["generic"][:4]), "Material": _M("fabric")}, "machine_wash adjustable",
                   "Reflective Trim, Storage Pouch", "for dogs and cats of all sizes"),
    "aquarium": _p("Brand, Capacity, Wattage, Material, Color, Dimensions", "Capacity, Wattage, Material",
                   {"Capacity": ("liter", (10, 200, 10)), "Wattage": ("watts", [5, 10, 25, 50, 100, 200]),
                    "Material": ("pool", ["Glass", "Acrylic", "Tempered Glass", "Plastic", "Natural Stone"])},
                   "warranty", "LED Light, Thermometer", "for healthy freshwater and marine tanks"),
    "pet_food": _p("Brand, Flavor, Weight, Age Group, Pack Quantity", "Flavor, Weight, Age Group, Pack Quantity",
                   {"Weight": ("grams", (200, 5000, 100)), "Age Group": ("pool", PET_AGES),
                    "Flavor": ("pool", ["Chicken", "Salmon", "Beef", "Lamb & Rice", "Turkey", "Duck", "Tuna"])},
                   "gluten_free organic", "Resealable Bag", "to keep your pet healthy"),
    "apparel_top": _p("Brand, Size, Color, Material, Fit, Sleeve Length, Gender, Pattern",
                      "Gender, Color, Size, Sleeve Length, Fit, Material",
                      {"Size": _S("apparel"), "Material": _M("fabric")},
                      "machine_wash", "Pockets, Hood, Zip Front", "for everyday wear"),
    "apparel_bottom": _p("Brand, Size, Color, Material, Fit, Gender, Pattern", "Gender, Fit, Color, Size, Material",
                         {"Size": _S("apparel"), "Material": _M("fabric")}, "machine_wash",
                         "Pockets, Elastic Waist, Belt Loops", "for work or weekend"),
    "footwear": _p("Brand, Size, Color, Material, Gender, Style", "Gender, Color, Size, Material",
                   {"Size": ("shoe", None), "Material": _M("shoe"), "Style": ("pool", POOLS["Style"][4:])},
                   "waterproof slip", "Cushioned Insole, Memory Foam Insole", "for all-day comfort"),
    "jewelry": _p("Brand, Material, Color, Gender, Style, Shape", "Material, Color, Gender, Shape",
                  {"Material": _M("jewelry"), "Color": ("color", ["silver", "gold", "black", "white", "pink"])},
                  "hypoallergenic", "Gift Box, Velvet Pouch", "for gifts and special occasions"),
    "accessory": _p("Brand, Color, Material, Gender, Size, Pattern", "Gender, Color, Material, Size",
                    {"Material": _M("fabric"), "Size": ("pool", ["One Size", "S/M", "L/XL", "Adjustable"])},
                    "machine_wash", "Gift Box", "to finish any outfit"),
    "craft": _p("Brand, Color, Material, Pack Quantity, Size", "Pack Quantity, Color, Material",
                {"Material": _M("craft")}, "", "Storage Case, Carry Bag", "for artists and hobbyists"),
    "instrument": _p("Brand, Color, Material, Size, Model Number, Finish", "Size, Color, Material, Finish",
                     {"Material": ("pool", ["Spruce", "Mahogany", "Maple", "Rosewood", "Basswood", "Plastic"]),
                      "Size": ("pool", ["Full Size", "3/4 Size", "1/2 Size", "Concert", "Soprano"])},
                     "", "Gig Bag, Tuner, Extra Strings", "for beginners and pros"),
    "party": _p("Brand, Color, Pack Quantity, Material, Shape", "Pack Quantity, Color, Shape",
                {"Material": _M("craft")},
                "", "Ribbon, Pump", "for birthdays and celebrations"),
    "baby": _p("Brand, Age Group, Color, Material, Pack Quantity, Size", "Age Group, Color, Pack Quantity",
               {"Age Group": ("pool", ["0-6 Months", "6-12 Months", "Newborn", "12 Months+", "0-3 Years"]),
                "Material": _M("toy"), "Size": _S("kids")}, "bpa machine_wash", "Travel Case",
               "for babies and toddlers"),
    "toy": _p("Brand, Age Group, Color, Material, Piece Count, Power Source", "Piece Count, Age Group, Color",
              {"Age Group": ("pool", TOY_AGES), "Material": _M("toy"),
               "Power Source": ("pool", ["Battery Powered", "USB Rechargeable", "Manual"])},
              "batteries", "Storage Box, Instruction Booklet", "for hours of creative play"),
    "safety": _p("Brand, Size, Color, Material, Pack Quantity", "Pack Quantity, Size, Color",
                 {"Size": _S("apparel"), "Material": _M("plastic")}, "adjustable", "Carry Pouch",
                 "for job site protection"),
    "industrial": _p("Brand, Material, Weight Capacity, Dimensions, Color, Pack Quantity",
                     "Weight Capacity, Material, Pack Quantity", {"Material": _M("metal")}, "foldable assembly",
                     "Casters, Lid", "for warehouses and garages"),
    "camera": _p("Brand, Resolution, Color, Weight, Battery, Model Number, Connectivity",
                 "Resolution, Model Number, Connectivity, Color",
                 {"Weight": ("grams", (80, 900, 10)), "Battery": ("mah", [900, 1200, 1500, 2000])},
                 "waterproof warranty", "Memory Card, Carrying Case, Mount Kit", "for capturing every moment"),
    "camera_acc": _p("Brand, Material, Color, Weight, Size, Model Number", "Material, Color, Size",
                     {"Material": _M("sport"), "Weight": ("grams", (50, 1500, 10))}, "waterproof adjustable",
                     "Cleaning Cloth, Pouch", "for photographers on the go"),
    "optics": _p("Brand, Color, Weight, Material, Model Number", "Color, Model Number",
                 {"Weight": ("grams", (150, 1200, 10)), "Material": _M("metal")}, "waterproof",
                 "Neck Strap, Lens Caps", "for birding and stargazing"),
    "computer": _p("Brand, Screen Size, Storage, RAM, Processor, Color, Model Number, Weight",
                   "Screen Size, RAM, Storage, Processor, Color, Model Number",
                   {"Color": ("color", ["silver", "grey", "black", "blue", "white"])}, "warranty",
                   "Backlit Keyboard, Stylus", "for work, school and play"),
    "pc_acc": _p("Brand, Connectivity, Color, Model Number, Dimensions", "Connectivity, Color, Model Number", {},
                 "warranty", "USB Receiver, Braided Cable", "for your desk setup"),
    "cable": _p("Brand, Length, Color, Pack Quantity, Connectivity", "Length, Pack Quantity, Color",
                {"Connectivity": ("pool", ["USB-C", "USB-A", "HDMI 2.1", "Cat 6", "Micro USB"])}, "warranty",
                "Velcro Tie", "for fast charging and data transfer"),
    "power": _p("Brand, Wattage, Battery, Connectivity, Color, Model Number", "Wattage, Battery, Connectivity",
                {"Wattage": ("watts", [18, 20, 30, 45, 65, 100, 140])}, "warranty", "Charging Cable, Travel Pouch",
                "for phones, tablets and laptops"),
    "storage": _p("Brand, Storage, Connectivity, Color, Model Number", "Storage, Connectivity, Color, Model Number",
                  {"Connectivity": ("pool", ["USB 3.2", "USB-C", "USB 3.0", "Thunderbolt", "SATA"])},
                  "waterproof warranty", "Protective Case", "for backups and file transfers"),
    "phone": _p("Brand, Screen Size, Storage, RAM, Color, Battery, Connectivity, Model Number",
                "Storage, Screen Size, Color, RAM, Connectivity",
                {"Screen Size": ("inch", [1.4, 1.8, 6.1, 6.5, 6.7, 6.8])}, "waterproof warranty", "Charger, Case",
                "for staying connected"),
    "audio": _p("Brand, Connectivity, Battery, Color, Model Number, Weight", "Connectivity, Color, Model Number",
                {"Weight": ("grams", (30, 3000, 10))}, "anc mic waterproof", "Charging Case, Carry Pouch",
                "for music lovers"),
    "tv": _p("Brand, Screen Size, Resolution, Connectivity, Model Number, Color",
             "Screen Size, Resolution, Model Number",
             {"Screen Size": ("inch", [24, 27, 32, 43, 50, 55, 65, 75])}, "remote warranty", "Wall Mount, Remote",
             "for movies, games and sports"),
    "network": _p("Brand, Connectivity, Color, Model Number, Dimensions", "Connectivity, Model Number",
                  {"Connectivity": ("pool", ["Wi-Fi 6", "Wi-Fi 6E", "Wi-Fi 7", "Gigabit Ethernet", "Dual Band"])},
                  "warranty", "Ethernet Cable", "for fast, stable internet"),
    "gaming": _p("Brand, Connectivity, Color, Model Number, Battery", "Connectivity, Color, Model Number", {},
                 "mic warranty", "USB-C Cable, Carry Case", "for competitive gaming"),
    "snack": _p("Brand, Flavor, Weight, Pack Quantity", "Flavor, Weight, Pack Quantity",
                {"Weight": ("grams", (30, 1000, 10))}, "gluten_free vegan organic sugar_free", "",
                "for snacking on the go"),
    "pantry": _p("Brand, Flavor, Weight, Volume, Pack Quantity", "Flavor, Weight, Volume, Pack Quantity",
                 {"Weight": ("grams", (100, 2000, 50)), "Volume": ("ml", (250, 1000, 50)),
                  "Flavor": ("pool", ["Original", "Garlic & Herb", "Smoky Chipotle", "Wildflower", "Extra Virgin",
                                      "Whole Grain", "Spicy", "Classic"])}, "gluten_free organic vegan", "",
                 "for your pantry"),
    "beverage": _p("Brand, Flavor, Volume, Pack Quantity, Weight", "Flavor, Volume, Pack Quantity, Weight",
                   {"Volume": ("ml", (250, 1000, 50)), "Weight": ("grams", (100, 1000, 50)),
                    "Flavor": ("pool", ["Dark Roast", "Medium Roast", "Green Tea", "Lemon Lime", "Peach", "Mango",
                                        "Original", "Mixed Berry", "Vanilla", "Chocolate"])},
                   "caffeine organic sugar_free", "", "for a refreshing break"),
    "furniture": _p("Brand, Material, Color, Dimensions, Weight Capacity, Style, Finish",
                    "Material, Color, Style, Weight Capacity",
                    {"Material": _M("wood"), "Dimensions": ("dims", (40, 200))},
                    "assembly", "Storage Drawer, Cushion", "for living spaces big and small"),
    "power_tool": _p("Brand, Voltage, Power Source, Battery, Weight, Model Number",
                     "Voltage, Power Source, Model Number",
                     {"Voltage": ("volts", [12, 18, 20, 40]), "Battery": ("mah", [2000, 4000, 5000]),
                      "Power Source": ("pool", ["Cordless", "Corded Electric", "Battery Powered"])},
                     "batteries warranty",
                     "Carrying Case, Charger", "for DIY projects and pros"),
    "hand_tool": _p("Brand, Material, Size, Piece Count, Finish", "Piece Count, Material, Size",
                    {"Material": _M("metal"), "Size": ("pool", ["Metric", "SAE", "1/4-inch Drive", "3/8-inch Drive",
                                                                "1/2-inch Drive", "Standard", "Compact"]),
                     "Piece Count": ("pieces", [5, 8, 12, 20, 40, 72])}, "warranty",
                    "Storage Case", "for the toolbox"),
    "hardware": _p("Brand, Material, Finish, Pack Quantity, Size, Color", "Pack Quantity, Finish, Material",
                   {"Material": _M("metal")}, "", "Mounting Screws", "for home repairs"),
    "electrical": _p("Brand, Voltage, Color, Pack Quantity, Connectivity", "Pack Quantity, Color, Connectivity",
                     {"Voltage": ("volts", [120, 125, 250])}, "warranty", "Wall Plate", "for a safer home"),
    "skincare": _p("Brand, Volume, Scent, Skin Type, SPF, Gender", "Volume, Skin Type, SPF, Scent", {},
                   "cruelty_free fragrance_free vegan", "", "for healthy, glowing skin"),
    "haircare": _p("Brand, Volume, Scent, Gender, Pack Quantity", "Volume, Scent, Pack Quantity", {},
                   "cruelty_free vegan", "", "for soft, shiny hair"),
    "makeup": _p("Brand, Color, Volume, Finish, Skin Type", "Color, Finish, Volume", {"Volume": ("ml", (5, 50, 1))},
                 "cruelty_free vegan waterproof", "Mirror, Brush", "for a flawless look"),
    "fragrance": _p("Brand, Scent, Volume, Gender", "Scent, Volume, Gender", {"Volume": ("ml", (30, 200, 10))},
                    "cruelty_free", "Travel Atomizer", "for day or night"),
    "grooming": _p("Brand, Wattage, Power Source, Color, Battery, Voltage", "Wattage, Power Source, Color",
                   {"Wattage": ("watts", [5, 10, 1200, 1800, 2000]), "Battery": ("mah", [600, 800, 1500])},
                   "waterproof auto_off warranty", "Travel Case, Comb Attachments", "for salon results at home"),
    "health": _p("Brand, Pack Quantity, Flavor, Weight, Power Source", "Pack Quantity, Flavor, Weight",
                 {"Weight": ("grams", (100, 2500, 50))}, "gluten_free vegan auto_off", "", "for everyday wellness"),
    "cookware": _p("Brand, Material, Size, Color, Finish, Model Number", "Material, Size, Color",
                   {"Material": _M("cookware"), "Size": ("pan", [8, 9.5, 10, 11, 12, 14])},
                   "dishwasher oven induction nonstick", "Lid, Glass Lid, Stay-Cool Handle", "for everyday cooking"),
    "kitchen_appliance": _p("Brand, Wattage, Capacity, Color, Voltage, Model Number, Material",
                            "Wattage, Capacity, Color, Model Number", {"Material": _M("kitchen")},
                            "dishwasher bpa auto_off", "Recipe Book, Measuring Cup", "for quick, easy meals"),
    "drinkware": _p("Brand, Capacity, Material, Color, Pack Quantity", "Capacity, Material, Color, Pack Quantity",
                    {"Capacity": ("ml", (250, 1200, 50)), "Material": _M("drink")},
                    "dishwasher bpa leakproof microwave", "Straw, Lid, Carry Loop", "for drinks at home or on the go"),
    "kitchen_tool": _p("Brand, Material, Color, Pack Quantity, Size", "Material, Color, Pack Quantity",
                       {"Material": _M("kitchen")}, "dishwasher bpa", "Hanging Loop, Storage Stand",
                       "for every home cook"),
    "container": _p("Brand, Capacity, Material, Pack Quantity, Color, Shape", "Pack Quantity, Capacity, Material",
                    {"Capacity": ("ml", (200, 3000, 100)), "Material": _M("drink")},
                    "dishwasher bpa leakproof microwave",
                    "Labels, Lids", "for meal prep and leftovers"),
    "bedding": _p("Brand, Size, Color, Material, Thread Count, Pattern", "Size, Thread Count, Material, Color",
                  {"Size": _S("bed"), "Material": _M("bedding")}, "machine_wash hypoallergenic", "Pillowcases",
                  "for a restful night"),
    "towel": _p("Brand, Color, Material, Pack Quantity, Size", "Pack Quantity, Color, Material",
                {"Material": _M("bedding")}, "machine_wash", "Hanging Loop", "for bath, beach and kitchen"),
    "decor": _p("Brand, Color, Material, Dimensions, Style, Shape", "Style, Color, Material, Shape",
                {"Material": _M("decor")}, "", "Hanging Kit", "for any room"),
    "lighting": _p("Brand, Wattage, Color, Finish, Style, Power Source", "Wattage, Style, Finish, Color",
                   {"Wattage": ("watts", [5, 9, 12, 40, 60, 100])}, "dimmable remote", "LED Bulb, Remote",
                   "for warm, inviting light"),
    "cleaning": _p("Brand, Scent, Volume, Pack Quantity", "Scent, Volume, Pack Quantity",
                   {"Volume": ("ml", (250, 3000, 50))},
                   "cruelty_free vegan", "", "for a sparkling clean home"),
    "home_appliance": _p("Brand, Wattage, Color, Voltage, Model Number, Capacity, Power Source",
                         "Wattage, Model Number, Color", {"Capacity": ("liter", (0.5, 6.0, 0.5))},
                         "remote auto_off warranty", "HEPA Filter, Remote", "for a comfortable home"),
    "garden": _p("Brand, Material, Length, Color, Size", "Length, Material, Color", {"Material": _M("plastic")},
                 "waterproof", "Spray Nozzle, Hanger", "for the garden and yard"),
    "power_garden": _p("Brand, Power Source, Voltage, Wattage, Weight, Model Number",
                       "Voltage, Power Source, Model Number",
                       {"Voltage": ("volts", [20, 40, 60, 80]), "Power Source": ("pool", ["Cordless", "Corded Electric",
                                                                                          "Gas Powered"])},
                       "batteries warranty", "Battery, Charger", "for a tidy yard"),
    "candle": _p("Brand, Scent, Weight, Color, Pack Quantity", "Scent, Weight, Pack Quantity",
                 {"Weight": ("grams", (100, 600, 10))}, "vegan", "Gift Box", "for a cozy home"),
    "luggage": _p("Brand, Capacity, Dimensions, Material, Color, Weight", "Capacity, Material, Color, Dimensions",
                  {"Capacity": ("liter", (20, 110, 5)), "Material": _M("bag")}, "tsa waterproof",
                  "Spinner Wheels, Laptop Sleeve, Shoe Pouch", "for travel and commuting"),
    "office": _p("Brand, Color, Pack Quantity, Material", "Pack Quantity, Color", {"Material": _M("craft")}, "",
                 "Storage Pouch", "for school and office"),
    "office_paper": _p("Brand, Size, Color, Pack Quantity, Piece Count", "Size, Pack Quantity, Piece Count",
                       {"Size": _S("paper"), "Piece Count": ("pieces", [50, 100, 200, 500])}, "", "",
                       "for notes, prints and mail"),
    "office_equip": _p("Brand, Color, Power Source, Model Number, Dimensions", "Model Number, Color, Power Source", {},
                       "warranty", "Starter Kit", "for a productive office"),
    "fitness": _p("Brand, Weight, Color, Material, Dimensions, Weight Capacity", "Weight, Material, Color",
                  {"Material": _M("sport"), "Weight": ("kg", (0.5, 30, 0.5))}, "foldable adjustable",
                  "Carry Strap, Workout Guide", "for home workouts"),
    "camping": _p("Brand, Capacity, Weight, Material, Color, Dimensions", "Capacity, Weight, Material, Color",
                  {"Capacity": ("persons", [1, 2, 3, 4, 6]), "Material": _M("bag")}, "waterproof foldable",
                  "Stuff Sack, Carry Bag", "for camping and hiking"),
    "ball_sport": _p("Brand, Size, Color, Material, Age Group", "Size, Color, Material",
                     {"Size": _S("ball"), "Material": _M("sport")}, "", "Pump, Needle", "for practice and games"),
    "cycling": _p("Brand, Size, Color, Material, Weight, Battery", "Size, Color, Material",
                  {"Size": ("pool", SIZES["generic"][:4]), "Weight": ("grams", (100, 900, 10)),
                   "Material": _M("sport")},
                  "waterproof adjustable", "Mounting Bracket", "for riders of all levels"),
    "water_sport": _p("Brand, Size, Color, Material, Age Group", "Size, Color, Age Group", {"Material": _M("sport")},
                      "adjustable", "Carry Bag", "for the pool, lake and sea"),
    "fishing": _p("Brand, Length, Material, Weight, Color", "Length, Material, Color",
                  {"Material": ("pool", ["Carbon Fiber", "Graphite", "Fiberglass", "Aluminum", "Nylon"]),
                   "Weight": ("grams", (50, 600, 10))}, "waterproof", "Rod Sleeve", "for freshwater and saltwater"),
    "car_elec": _p("Brand, Voltage, Connectivity, Model Number, Screen Size, Color",
                   "Voltage, Model Number, Connectivity",
                   {"Voltage": ("volts", [12, 24]), "Screen Size": ("inch", [4.3, 7, 9, 10.1])}, "waterproof warranty",
                   "Mounting Kit", "for safer, smarter drives"),
    "car_care": _p("Brand, Volume, Scent, Pack Quantity", "Volume, Pack Quantity, Scent",
                   {"Volume": ("ml", (100, 2000, 50))},
                   "", "Microfiber Towel", "for a showroom shine"),
    "car_acc": _p("Brand, Material, Color, Pack Quantity, Size", "Material, Color, Pack Quantity",
                  {"Material": ("pool", ["Leather", "Faux Leather", "Neoprene", "Rubber", "Polyester", "Mesh"]),
                   "Size": ("pool", ["Universal Fit", "Standard", "Large", "Compact"])}, "waterproof", "Storage Bag",
                  "for a cleaner cabin"),
    "car_part": _p("Brand, Model Number, Material, Pack Quantity, Voltage", "Model Number, Pack Quantity, Material",
                   {"Voltage": ("volts", [12]), "Material": _M("metal")}, "warranty", "Installation Guide",
                   "for reliable performance"),
}

# (branch, sub-path under the branch, profile, leaves). A leaf written "Name|Noun" gives the title
# noun explicitly; otherwise the noun is the leaf name made singular by _singular.
TAXONOMY = [
    ("Animals & Pet Supplies", "Pet Supplies > Dog Supplies", "pet_gear",
     "Dog Beds; Dog Collars; Dog Leashes; Dog Harnesses; Dog Toys; Dog Bowls; Dog Crates"),
    ("Animals & Pet Supplies", "Pet Supplies > Cat Supplies", "pet_gear",
     "Cat Beds; Cat Trees; Cat Litter Boxes|Cat Litter Box; Cat Scratching Posts; Cat Carriers"),
    ("Animals & Pet Supplies", "Pet Supplies > Pet Food", "pet_food",
     "Dry Dog Food|Dry Dog Food; Wet Cat Food|Wet Cat Food; Dog Treats; Cat Treats; Bird Seed|Bird Seed Mix"),
    ("Animals & Pet Supplies", "Pet Supplies > Aquarium Supplies", "aquarium",
     "Aquarium Filters; Aquarium Heaters; Fish Tanks; Aquarium Gravel|Aquarium Gravel"),
    ("Apparel & Accessories", "Clothing > Shirts & Tops", "apparel_top",
     "T-Shirts; Polo Shirts; Dress Shirts; Blouses; Tank Tops; Henley Shirts; Sweatshirts; Hoodies|Hoodie"),
    ("Apparel & Accessories", "Clothing > Pants", "apparel_bottom",
     "Jeans|Jeans; Chinos|Chinos; Cargo Pants|Cargo Pants; Sweatpants|Sweatpants; Leggings|Leggings"),
    ("Apparel & Accessories", "Clothing > Shorts & Skirts", "apparel_bottom",
     "Denim Shorts|Denim Shorts; Athletic Shorts|Athletic Shorts; Pleated Skirts; Mini Skirts"),
    ("Apparel & Accessories", "Clothing > Outerwear", "apparel_top",
     "Rain Jackets; Puffer Jackets; Denim Jackets; Trench Coats; Fleece Jackets; Parkas; Vests"),
    ("Apparel & Accessories", "Clothing > Dresses", "apparel_top",
     "Maxi Dresses; Midi Dresses; Cocktail Dresses; Shirt Dresses"),
    ("Apparel & Accessories", "Clothing > Sleepwear", "apparel_top", "Pajama Sets; Bathrobes; Nightgowns"),
    ("Apparel & Accessories", "Shoes", "footwear",
     "Running Shoes; Sneakers; Hiking Boots; Ankle Boots; Sandals; Slippers; Loafers; Flip Flops; Rain Boots"),
    ("Apparel & Accessories", "Jewelry", "jewelry",
     "Necklaces; Bracelets; Earrings; Rings; Wristwatches; Anklets; Brooches"),
    ("Apparel & Accessories", "Clothing Accessories", "accessory",
     "Baseball Caps; Beanies|Beanie; Scarves|Scarf; Winter Gloves|Winter Gloves; Belts; "
     "Sunglasses|Sunglasses; Neckties|Necktie"),
    ("Apparel & Accessories", "Handbags & Wallets", "accessory", "Wallets; Tote Bags; Crossbody Bags; Clutches|Clutch"),
    ("Arts & Entertainment", "Hobbies & Creative Arts > Arts & Crafts", "craft",
     "Acrylic Paint Sets; Paint Brushes; Sketchbooks; Colored Pencils|Colored Pencil Set; Knitting Yarn|Yarn; "
     "Sewing Kits; Canvas Panels; Craft Glue|Craft Glue"),
    ("Arts & Entertainment", "Hobbies & Creative Arts > Musical Instruments", "instrument",
     "Acoustic Guitars; Electric Guitars; Ukuleles; Digital Pianos; Violins; Harmonicas"),
    ("Arts & Entertainment", "Hobbies & Creative Arts > Instrument Accessories", "craft",
     "Guitar Strings|Guitar Strings; Guitar Picks; Music Stands; Instrument Cables"),
    ("Arts & Entertainment", "Party & Celebration", "party",
     "Balloons; Party Banners; Birthday Candles; Party Plates; Gift Wrap|Gift Wrap; Confetti|Confetti"),
    ("Baby & Toddler", "Baby Feeding", "baby", "Baby Bottles; Sippy Cups; Bibs; High Chairs; Baby Food Makers"),
    ("Baby & Toddler", "Diapering", "baby", "Diapers; Baby Wipes|Baby Wipes; Diaper Bags; Changing Pads"),
    ("Baby & Toddler", "Baby Transport", "baby", "Strollers; Car Seats; Baby Carriers"),
    ("Baby & Toddler", "Nursery", "baby", "Cribs; Crib Sheets; Baby Monitors; Swaddle Blankets"),
    ("Baby & Toddler", "Baby Toys", "toy", "Teethers; Rattles; Play Mats; Stacking Toys"),
    ("Business & Industrial", "Work Safety Protective Gear", "safety",
     "Safety Glasses|Safety Glasses; Work Gloves|Work Gloves; Hard Hats; Ear Muffs|Ear Muffs; Safety Vests"),
    ("Business & Industrial", "Material Handling", "industrial",
     "Hand Trucks; Storage Bins; Pallet Jacks; Shelving Units; Step Ladders"),
    ("Business & Industrial", "Medical > Medical Supplies", "safety",
     "Disposable Gloves|Disposable Gloves; Face Masks; First Aid Kits"),
    ("Business & Industrial", "Janitorial", "industrial", "Mop Buckets; Trash Cans; Floor Squeegees"),
    ("Cameras & Optics", "Cameras", "camera",
     "Digital Cameras; Action Cameras; Instant Cameras; Security Cameras; Dash Cams; Webcams"),
    ("Cameras & Optics", "Camera & Optic Accessories", "camera_acc",
     "Camera Lenses; Tripods; Camera Bags; Lens Filters; Camera Straps"),
    ("Cameras & Optics", "Optics", "optics",
     "Binoculars|Binoculars; Telescopes; Monoculars; Magnifying Glasses|Magnifier"),
    ("Electronics", "Computers", "computer", "Laptops; Desktop Computers; Tablets; Chromebooks; Mini PCs"),
    ("Electronics", "Electronics Accessories > Computer Accessories", "pc_acc",
     "Keyboards; Computer Mice|Computer Mouse; Mouse Pads; USB Hubs; Laptop Stands; Docking Stations"),
    ("Electronics", "Electronics Accessories > Cables", "cable",
     "HDMI Cables; USB-C Cables; Ethernet Cables; Charging Cables; Extension Cords"),
    ("Electronics", "Electronics Accessories > Power", "power",
     "Power Banks; Wall Chargers; Wireless Chargers; Car Chargers; Surge Protectors"),
    ("Electronics", "Electronics Accessories > Storage Devices", "storage",
     "External Hard Drives; USB Flash Drives; Solid State Drives; Memory Cards"),
    ("Electronics", "Communications", "phone", "Smartphones; Cordless Phones; Smartwatches; Fitness Trackers"),
    ("Electronics", "Audio", "audio",
     "Headphones|Headphones; Earbuds|Earbuds; Bluetooth Speakers; Soundbars; Turntables; Microphones"),
    ("Electronics", "Video", "tv", "Televisions; Projectors; Computer Monitors; Streaming Media Players"),
    ("Electronics", "Video Game Accessories", "gaming", "Game Controllers; Gaming Headsets; Gaming Keyboards"),
    ("Electronics", "Networking", "network", "Wi-Fi Routers; Range Extenders; Network Switches; Cable Modems"),
    ("Food & Beverages", "Food Items > Snack Foods", "snack",
     "Potato Chips|Potato Chips; Pretzels; Granola Bars; Trail Mix|Trail Mix; Popcorn|Popcorn; Crackers; "
     "Beef Jerky|Beef Jerky; Rice Cakes"),
    ("Food & Beverages", "Food Items > Candy & Chocolate", "snack",
     "Chocolate Bars; Gummy Candy|Gummy Candy; Hard Candy|Hard Candy; Breath Mints|Breath Mints"),
    ("Food & Beverages", "Food Items > Pantry", "pantry",
     "Pasta|Pasta; Basmati Rice|Basmati Rice; Olive Oil|Olive Oil; Honey|Honey; Peanut Butter|Peanut Butter; "
     "Breakfast Cereal|Breakfast Cereal; Spice Blends; Hot Sauce|Hot Sauce; Fruit Jam|Fruit Jam"),
    ("Food & Beverages", "Beverages", "beverage",
     "Coffee Beans|Coffee Beans; Ground Coffee|Ground Coffee; Tea Bags|Tea Bags; Sparkling Water|Sparkling Water; "
     "Energy Drinks; Fruit Juice|Fruit Juice; Hot Cocoa Mix|Hot Cocoa Mix"),
    ("Furniture", "Sofas & Chairs", "furniture",
     "Sofas; Loveseats; Recliners; Accent Chairs; Ottomans; Bean Bag Chairs"),
    ("Furniture", "Tables", "furniture", "Coffee Tables; Dining Tables; Side Tables; Console Tables"),
    ("Furniture", "Office Furniture", "furniture",
     "Office Chairs; Standing Desks; Computer Desks; Filing Cabinets; Bookcases"),
    ("Furniture", "Bedroom Furniture", "furniture", "Bed Frames; Mattresses; Nightstands; Dressers; Wardrobes"),
    ("Furniture", "Outdoor Furniture", "furniture", "Patio Chairs; Patio Tables; Hammocks; Outdoor Benches"),
    ("Furniture", "Shelving", "furniture", "Wall Shelves; Floating Shelves; Storage Cabinets; Shoe Racks"),
    ("Hardware", "Tools > Power Tools", "power_tool",
     "Cordless Drills; Impact Drivers; Circular Saws; Jigsaws; Angle Grinders; Orbital Sanders; Heat Guns"),
    ("Hardware", "Tools > Hand Tools", "hand_tool",
     "Hammers; Screwdriver Sets; Wrench Sets; Pliers|Pliers; Utility Knives|Utility Knife; Tape Measures; "
     "Spirit Levels; Socket Sets"),
    ("Hardware", "Hardware Accessories", "hardware",
     "Wood Screws; Wall Anchors; Cabinet Hinges; Door Handles; Padlocks; Wall Hooks"),
    ("Hardware", "Plumbing", "hardware", "Shower Heads; Kitchen Faucets; Bathroom Faucets; Toilet Seats"),
    ("Hardware", "Electrical Supplies", "electrical", "Light Switches; Smart Plugs; Outlet Covers; Power Strips"),
    ("Hardware", "Tool Storage", "industrial", "Tool Boxes; Tool Bags; Workbenches"),
    ("Health & Beauty", "Personal Care > Skin Care", "skincare",
     "Face Moisturizers; Facial Cleansers; Sunscreen|Sunscreen; Face Serums; Eye Creams; Body Lotion|Body Lotion; "
     "Lip Balm|Lip Balm"),
    ("Health & Beauty", "Personal Care > Hair Care", "haircare",
     "Shampoo|Shampoo; Conditioner|Conditioner; Hair Oil|Hair Oil; Hair Gel|Hair Gel; Dry Shampoo|Dry Shampoo"),
    ("Health & Beauty", "Personal Care > Cosmetics", "makeup",
     "Lipsticks; Mascara|Mascara; Liquid Foundation|Liquid Foundation; Eyeshadow Palettes; Nail Polish|Nail Polish"),
    ("Health & Beauty", "Personal Care > Fragrance", "fragrance",
     "Eau de Parfum|Eau de Parfum; Cologne|Cologne; Body Mist|Body Mist"),
    ("Health & Beauty", "Personal Care > Hair Styling Tools", "grooming",
     "Hair Dryers; Flat Irons; Curling Irons; Hair Clippers"),
    ("Health & Beauty", "Personal Care > Shaving & Grooming", "grooming",
     "Electric Shavers; Beard Trimmers; Electric Toothbrushes; Water Flossers"),
    ("Health & Beauty", "Health Care", "health",
     "Multivitamins; Protein Powder|Protein Powder; Fish Oil Capsules|Fish Oil Capsules; Heating Pads; "
     "Pill Organizers"),
    ("Home & Garden", "Kitchen & Dining > Cookware", "cookware",
     "Frying Pans; Saucepans; Stock Pots; Woks; Dutch Ovens; Griddles; Roasting Pans"),
    ("Home & Garden", "Kitchen & Dining > Kitchen Appliances", "kitchen_appliance",
     "Blenders; Coffee Makers; Electric Kettles; Toasters; Air Fryers; Stand Mixers; Rice Cookers; Slow Cookers; "
     "Food Processors; Juicers"),
    ("Home & Garden", "Kitchen & Dining > Drinkware", "drinkware",
     "Water Bottles; Travel Mugs; Coffee Mugs; Wine Glasses; Tumblers; Pitchers"),
    ("Home & Garden", "Kitchen & Dining > Kitchen Tools & Utensils", "kitchen_tool",
     "Chef Knives|Chef Knife; Cutting Boards; Spatulas; Mixing Bowls; Measuring Cups; Can Openers; Vegetable Peelers; "
     "Whisks"),
    ("Home & Garden", "Kitchen & Dining > Food Storage", "container",
     "Food Storage Containers; Lunch Boxes|Lunch Box; Glass Jars; Bread Boxes|Bread Box"),
    ("Home & Garden", "Linens & Bedding > Bedding", "bedding",
     "Bed Sheet Sets; Duvet Covers; Comforters; Bed Pillows; Mattress Toppers; Throw Blankets"),
    ("Home & Garden", "Linens & Bedding > Towels", "towel", "Bath Towels; Hand Towels; Beach Towels; Kitchen Towels"),
    ("Home & Garden", "Decor", "decor",
     "Wall Clocks; Picture Frames; Vases; Throw Pillows; Area Rugs; Wall Mirrors; Artificial Plants; Curtain Panels"),
    ("Home & Garden", "Lighting", "lighting",
     "Table Lamps; Floor Lamps; Ceiling Lights; String Lights|String Lights; Desk Lamps; Night Lights"),
    ("Home & Garden", "Household Supplies > Cleaning Supplies", "cleaning",
     "Dish Soap|Dish Soap; Laundry Detergent|Laundry Detergent; All-Purpose Cleaners; Fabric Softener|Fabric Softener"),
    ("Home & Garden", "Household Appliances", "home_appliance",
     "Vacuum Cleaners; Robot Vacuums; Air Purifiers; Humidifiers; Space Heaters; Tower Fans; Steam Irons"),
    ("Home & Garden", "Lawn & Garden > Gardening", "garden",
     "Garden Hoses; Pruning Shears|Pruning Shears; Planters; Watering Cans; Wheelbarrows"),
    ("Home & Garden", "Lawn & Garden > Outdoor Power Equipment", "power_garden",
     "Lawn Mowers; Leaf Blowers; String Trimmers; Hedge Trimmers; Pressure Washers; Chainsaws"),
    ("Home & Garden", "Home Fragrance", "candle", "Scented Candles; Reed Diffusers; Wax Melts|Wax Melts"),
    ("Luggage & Bags", "", "luggage",
     "Suitcases; Carry-On Luggage|Carry-On Suitcase; Duffel Bags; Backpacks; Garment Bags; Messenger Bags; "
     "Laptop Bags"),
    ("Luggage & Bags", "Travel Accessories", "office", "Luggage Tags; Travel Pillows; Packing Cubes|Packing Cubes"),
    ("Office Supplies", "Writing Instruments", "office",
     "Ballpoint Pens; Gel Pens; Pencils; Highlighters; Permanent Markers; Dry Erase Markers; Fountain Pens"),
    ("Office Supplies", "Paper Products", "office_paper",
     "Copy Paper|Copy Paper; Spiral Notebooks; Sticky Notes|Sticky Notes; Index Cards; Envelopes"),
    ("Office Supplies", "Office Equipment", "office_equip",
     "Label Makers; Paper Shredders; Laminators; Calculators; Printers"),
    ("Office Supplies", "General Office Supplies", "office",
     "Staplers; Paper Clips|Paper Clips; Binders; File Folders; Desk Organizers; Scissors|Scissors; Tape Dispensers"),
    ("Sporting Goods", "Exercise & Fitness", "fitness",
     "Yoga Mats; Dumbbells; Kettlebells; Resistance Bands; Jump Ropes; Exercise Bikes; Foam Rollers; Pull-Up Bars"),
    ("Sporting Goods", "Outdoor Recreation > Camping & Hiking", "camping",
     "Tents; Sleeping Bags; Camping Chairs; Hiking Backpacks; Headlamps; Camping Stoves; Coolers; Trekking Poles"),
    ("Sporting Goods", "Athletics > Team Sports", "ball_sport",
     "Soccer Balls; Basketballs; Volleyballs; Footballs; Baseball Gloves; Hockey Sticks; Tennis Rackets"),
    ("Sporting Goods", "Outdoor Recreation > Cycling", "cycling",
     "Bike Helmets; Bike Lights; Bike Locks; Bike Pumps; Cycling Gloves|Cycling Gloves"),
    ("Sporting Goods", "Outdoor Recreation > Water Sports", "water_sport",
     "Swim Goggles|Swim Goggles; Life Jackets; Snorkel Sets; Paddle Boards"),
    ("Sporting Goods", "Outdoor Recreation > Fishing", "fishing",
     "Fishing Rods; Fishing Reels; Tackle Boxes|Tackle Box; Fishing Line|Fishing Line"),
    ("Toys & Games", "Toys > Building Toys", "toy",
     "Building Block Sets; Magnetic Tiles|Magnetic Tiles; Marble Runs"),
    ("Toys & Games", "Toys > Dolls & Action Figures", "toy", "Fashion Dolls; Action Figures; Dollhouses; Plush Toys"),
    ("Toys & Games", "Toys > Remote Control Toys", "toy", "RC Cars; Drones; RC Helicopters; RC Boats"),
    ("Toys & Games", "Toys > Educational Toys", "toy", "Science Kits; Coding Robots; Flash Cards|Flash Cards; Globes"),
    ("Toys & Games", "Games", "toy", "Board Games; Card Games; Jigsaw Puzzles; Chess Sets; Dice Sets"),
    ("Toys & Games", "Toys > Outdoor Play", "toy", "Kids Scooters; Trampolines; Water Guns; Kites"),
    ("Toys & Games", "Toys > Pretend Play", "toy", "Play Kitchens; Toy Tool Sets; Dress-Up Costumes"),
    ("Vehicles & Parts", "Vehicle Parts & Accessories > Car Electronics", "car_elec",
     "Car Stereos; Backup Cameras; Car Phone Mounts; Tire Inflators; Jump Starters"),
    ("Vehicles & Parts", "Vehicle Parts & Accessories > Car Care", "car_care",
     "Car Wax|Car Wax; Car Wash Soap|Car Wash Soap; Microfiber Cloths; Tire Shine|Tire Shine"),
    ("Vehicles & Parts", "Vehicle Parts & Accessories > Interior Accessories", "car_acc",
     "Seat Covers; Floor Mats; Steering Wheel Covers; Sun Shades; Trunk Organizers"),
    ("Vehicles & Parts", "Vehicle Parts & Accessories > Vehicle Parts", "car_part",
     "Wiper Blades; Headlight Bulbs; Brake Pads; Engine Air Filters; Spark Plugs; Car Batteries"),
]


def _singular(name: str) -> str:
    """'Frying Pans' -> 'Frying Pan', 'Brushes' -> 'Brush', 'Batteries' -> 'Battery' (last word only)."""
    head, _, last = name.rpartition(" ")
    if last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("ches", "shes", "sses", "xes")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith("ss"):
        last = last[:-1]
    return f"{head} {last}" if head else last


@dataclass(frozen=True)
class _Leaf:
    path: tuple     # category path from the root
    noun: str       # the title noun
    profile: str
    branch: str


def _leaves() -> list[_Leaf]:
    out = []
    for branch, sub, profile, names in TAXONOMY:
        prefix = [branch] + ([s.strip() for s in sub.split(">")] if sub else [])
        for item in names.split(";"):
            name, _, noun = item.strip().partition("|")
            out.append(_Leaf(tuple(prefix + [name]), noun or _singular(name), profile, branch))
    return out


LEAVES = _leaves()

# ---------------------------------------------------------------------------------------------
# Values with unit variants
# ---------------------------------------------------------------------------------------------

def _n(x: float) -> str:
    """A number as people write it: 1.5, 2, 0.25 (no float noise like 1.2000000000000002)."""
    return f"{round(x, 2):g}"


def _pick(rng: random.Random, forms: list[str]) -> str:
    """A surface form: the first (cleanest) one 40% of the time, else any."""
    return forms[0] if rng.random() < 0.4 else rng.choice(forms)


def _steps(rng: random.Random, lo: float, hi: float, step: float) -> float:
    return lo + step * rng.randint(0, int(round((hi - lo) / step)))


def _model_number(rng: random.Random) -> str:
    letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTVWXZ") for _ in range(rng.randint(2, 3)))
    digits = str(rng.randint(100, 9999))
    suffix = rng.choice(["", "", "B", "X", "S", "-2", "Pro"])
    return f"{letters}{rng.choice(['-', '-', ''])}{digits}{suffix}"


def _make_value(rng: random.Random, spec: tuple, brands: list[str]) -> tuple[str, str]:
    """(canonical, surface) for a value spec (kind, argument). The surface carries the noise."""
    kind, arg = spec
    if kind == "brand":
        v = rng.choice(brands)
        return v, v
    if kind == "color":
        family = rng.choice(arg or list(COLORS))
        return family, rng.choice(COLORS[family])
    if kind in ("pool", "size"):
        v = rng.choice(SIZES[arg] if kind == "size" else arg)
        return v, v
    if kind == "model":
        v = _model_number(rng)
        return v, v
    if kind == "shoe":
        v = rng.choice(SHOE_SIZES)
        return v, _pick(rng, [f"US {v}", f"Size {v}", f"{v} US", f"US Size {v}"])
    if kind in ("pan", "inch"):
        d = rng.choice(arg)
        forms = [f"{_n(d)} in", f'{_n(d)}"', f"{_n(d)}-inch", f"{_n(d)} Inch", f"{_n(d)}in"]
        return f"{_n(d)} in", _pick(rng, forms + ([f"{round(d * 2.54)} cm"] if kind == "pan" else []))
    if kind == "persons":
        v = rng.choice(arg)
        return f"{v} person", _pick(rng, [f"{v}-Person", f"{v} Person", f"{v} Man"])
    if kind == "ml":
        ml = int(_steps(rng, *arg))
        forms = [f"{ml} ml", f"{ml}ml", f"{ml}ML", f"{ml} mL", f"{_n(ml / 29.5735)} fl oz", f"{_n(ml / 29.5735)}oz"]
        if ml >= 250 and ml % 50 == 0:
            forms += [f"{_n(ml / 1000)}L", f"{_n(ml / 1000)} L", f"{_n(ml / 1000)} Liter"]
        return f"{ml} ml", _pick(rng, forms)
    if kind == "liter":
        v = _steps(rng, *arg)
        forms = [f"{_n(v)} L", f"{_n(v)}L", f"{_n(v)} Liter", f"{_n(v)}-Liter", f"{_n(v)} Litre"]
        return f"{_n(v)} L", _pick(rng, forms + ([f"{_n(v * 1000)} ml"] if v <= 2 else []))
    if kind == "kg":
        v = _steps(rng, *arg)
        lb = _n(v * 2.20462)
        forms = [f"{_n(v)} kg", f"{_n(v)}kg", f"{_n(v)} KG", f"{lb} lbs", f"{lb} lb", f"{lb} Pounds"]
        return f"{_n(v)} kg", _pick(rng, forms + ([f"{_n(v * 1000)} g"] if v < 1 else []))
    if kind == "grams":
        g = int(_steps(rng, *arg))
        oz = _n(g / 28.3495)
        forms = [f"{g} g", f"{g}g", f"{g} grams", f"{oz} oz", f"{oz}oz", f"{oz} Ounce"]
        return f"{g} g", _pick(rng, forms + ([f"{_n(g / 1000)} kg"] if g >= 1000 else []))
    if kind == "dims":
        lo, hi = arg
        a = rng.randint(lo, hi)
        b = rng.randint(max(2, lo // 2), a)
        c = rng.randint(max(2, lo // 4), b)
        i = [_n(x / 2.54) for x in (a, b, c)]
        forms = [f"{a} x {b} x {c} cm", f"{a}x{b}x{c}cm", f"{a} x {b} x {c} centimeters",
                 f'{i[0]}" x {i[1]}" x {i[2]}"', f"{i[0]} x {i[1]} x {i[2]} in"]
        return f"{a} x {b} x {c} cm", _pick(rng, forms)
    if kind == "watts":
        w = rng.choice(arg)
        forms = [f"{w}W", f"{w} W", f"{w} Watts", f"{w}-Watt"] + ([f"{_n(w / 1000)} kW"] if w >= 1000 else [])
        return f"{w} W", _pick(rng, forms)
    if kind == "volts":
        v = rng.choice(arg)
        return f"{v} V", _pick(rng, [f"{v}V", f"{v} V", f"{v} Volt", f"{v}-Volt", f"{v} Volts"])
    if kind in ("gb", "ram"):
        g = rng.choice(arg)
        if g >= 1024:
            return f"{g} GB", _pick(rng, [f"{g // 1024}TB", f"{g // 1024} TB"])
        return f"{g} GB", _pick(rng, [f"{g}GB", f"{g} GB"] + ([f"{g}G"] if kind == "ram" else []))
    if kind == "pack":
        n = rng.choice(arg)
        return str(n), _pick(rng, [f"Pack of {n}", f"{n} Pack", f"{n}-Pack", f"{n} pk", f"{n}pk", f"{n}-Pk",
                                   f"{n} Count", f"{n}ct", f"Set of {n}", f"{n} Pcs"])
    if kind == "pieces":
        n = rng.choice(arg)
        return str(n), _pick(rng, [f"{n} Pieces", f"{n}-Piece", f"{n} pcs", f"{n} Pcs", f"{n} PCS"])
    if kind == "length":
        ft = rng.randint(*arg)
        m = _n(ft * 0.3048)
        return f"{ft} ft", _pick(rng, [f"{ft} ft", f"{ft}ft", f"{ft} feet", f"{ft}-Foot", f"{m} m", f"{m}m"])
    if kind == "mah":
        m = rng.choice(arg)
        return f"{m} mAh", _pick(rng, [f"{m}mAh", f"{m} mAh", f"{m:,} mAh", f"{m:,}mAh"])
    if kind == "tc":
        t = rng.choice(arg)
        return str(t), _pick(rng, [f"{t} Thread Count", f"{t}TC", f"{t}-Thread-Count", f"{t} TC"])
    if kind == "lbs":
        w = rng.choice(arg)
        return f"{w} lb", _pick(rng, [f"{w} lbs", f"{w} lb", f"{w}lbs", f"{round(w * 0.4536)} kg"])
    if kind == "spf":
        s = rng.choice(arg)
        return f"SPF {s}", _pick(rng, [f"SPF {s}", f"SPF{s}", f"SPF {s}+"])
    raise ValueError(f"unknown value kind {kind!r}")


# ---------------------------------------------------------------------------------------------
# Products
# ---------------------------------------------------------------------------------------------

class _Text:
    """Text built piece by piece, remembering where each attribute value went (key, begin, end)."""

    def __init__(self):
        self.parts: list[str] = []
        self.spans: list[tuple[str, int, int]] = []
        self.claims: list[str] = []       # yes/no facts this text states or denies
        self.n = 0

    def add(self, text: str, key: str | None = None) -> "_Text":
        if key is not None:
            self.spans.append((key, self.n, self.n + len(text)))
        self.parts.append(text)
        self.n += len(text)
        return self

    def extend(self, other: "_Text") -> None:
        base = self.n
        self.parts += other.parts
        self.spans += [(k, b + base, e + base) for k, b, e in other.spans]
        self.claims += other.claims
        self.n += other.n

    def drop_final_period(self) -> None:
        if self.parts and self.parts[-1].endswith(".") and not any(e == self.n for _, _, e in self.spans):
            self.parts[-1] = self.parts[-1][:-1]
            self.n -= 1

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _, _ in self.spans))


def _fill(template: str, fields: dict[str, tuple[str, str | None]]) -> _Text:
    """Template with {name} fields; each field is (text, attribute key or None)."""
    t = _Text()
    rest = template
    while "{" in rest:
        before, _, rest = rest.partition("{")
        name, _, rest = rest.partition("}")
        t.add(before)
        t.add(*fields[name])
    return t.add(rest)


def _claim_text(rng: random.Random, claim: str, truth: bool) -> _Text:
    t = _Text().add(rng.choice(CLAIMS[claim][1] if truth else CLAIMS[claim][2]))
    t.claims.append(claim)
    return t


def _lower_noun(noun: str) -> str:
    """'Frying Pan' -> 'frying pan', 'Pull-Up Bar' -> 'pull-up bar'; acronyms stay: 'HDMI cable', 'USB-C hub'."""
    return " ".join(w if re.search(r"[A-Z]{2}|\d", w) else w.lower() for w in noun.split())


# Words around a title value, so "16GB" reads as RAM and "512GB" as storage.
_TITLE_PREFIX = {"Model Number": ["", "", "Model ", "#"], "Weight": ["", "", "Net Wt "]}
_TITLE_SUFFIX = {"RAM": [" RAM", " Memory"], "Storage": [" SSD", " Storage", ""], "Battery": [" Battery", ""]}
_PRE_NOUN = ("Color", "Material", "Gender", "Fit", "Sleeve Length", "Pattern", "Style", "Flavor", "Scent", "Finish",
             "Shape", "Screen Size", "Capacity", "Wattage", "Voltage", "Resolution", "Connectivity", "SPF")
# {a}: "a " / "an " / "" (plural nouns such as "Potato Chips"), {is}: "is" / "are".
_INTROS_BRAND = ["The {b} {n} {is} designed {u}.", "Meet the {b} {n}, built {u}.", "{b} brings you {a}{n} made {u}.",
                 "From {b}: {a}{n} made {u}."]
_INTROS = ["The {n} {is} designed {u}.", "Our {n} {is} built {u}.", "Meet {a}{n} made {u}."]
_BULLET_HEADS = ["PREMIUM QUALITY: ", "EASY TO USE: ", "GREAT VALUE: ", "WHAT YOU GET: "]
_GENERIC_BULLETS = ["Easy to set up and use.", "Thoughtfully packaged.", "Backed by responsive customer service.",
                    "Quality checked before shipping."]


def _title(rng: random.Random, leaf: _Leaf, vals: dict, keys: list[str], color_abbr: str | None,
           extra: str | None, noise: list[str]) -> _Text:
    """Brand + key attributes + the leaf noun, in a random order with marketing words and separators."""
    head, pre, post = [], [], []
    for k in keys:
        surface = vals[k][1]
        if k == "Brand":
            (head if rng.random() < 0.9 else post).append([(surface, k)])
            continue
        if k == "Color" and color_abbr:
            chunk = [(color_abbr, None)]
        else:
            chunk = [(rng.choice(_TITLE_PREFIX.get(k, [""])), None), (surface, k),
                     (rng.choice(_TITLE_SUFFIX.get(k, [""])), None)]
        if k == "Model Number" and head and rng.random() < 0.5:
            head.append(chunk)
        else:
            (pre if rng.random() < (0.65 if k in _PRE_NOUN else 0.2) else post).append(chunk)
    rng.shuffle(pre)
    rng.shuffle(post)
    r = rng.random()
    marketing = rng.choice(MARKETING) if r < 0.35 else None
    if marketing:
        noise.append("marketing")
    if marketing and r < 0.25:
        head.insert(0, [(marketing, None)])
        marketing = None
    noun = leaf.noun if rng.random() > 0.1 else leaf.path[-1]
    t = _Text()
    for i, chunk in enumerate(head + pre + [[(noun, None)]]):
        if i:
            t.add(" ")
        for text, key in chunk:
            t.add(text, key)
    if extra:
        joiner = rng.choice([" w/ ", " w/ ", " with ", " + ", " W/ "])
        if "/" in joiner:
            noise.append("abbreviation")
        t.add(joiner + extra)
    sep = rng.choice([", ", ", ", " - ", " | ", " "])
    for chunk in post:
        t.add(sep)
        for text, key in chunk:
            t.add(text, key)
    if marketing:
        t.add((" - " if sep == " " else sep) + marketing)
    return t


def _make_product(rng: random.Random, index: int, leaf: _Leaf) -> tuple[Product, list[_Text]]:
    """One product and its text units (title, description sentences, bullets) for grounding questions."""
    prof = PROFILES[leaf.profile]
    vals = {k: _make_value(rng, prof.values.get(k, ATTRIBUTES[k][0]), BRANDS[leaf.branch]) for k in prof.keys}
    others = [k for k in prof.keys if k != "Brand"]
    chosen = ["Brand"] + [k for k in others if rng.random() >= 0.2]
    if len(chosen) < 3:  # keep at least two attributes besides the brand
        chosen += rng.sample([k for k in others if k not in chosen], 3 - len(chosen))
    stated = [k for k in prof.keys if k in chosen]
    claims = {}
    for c in prof.claims:
        r = rng.random()
        if r < 0.45:
            claims[c] = True
        elif r < 0.7 and CLAIMS[c][2]:
            claims[c] = False
    noise = ["missing"] if len(stated) < len(prof.keys) else []
    for k in stated:
        kind = (prof.values.get(k) or ATTRIBUTES[k][0])[0]
        if kind not in ("brand", "color", "pool", "size", "model") and vals[k][0] != vals[k][1]:
            noise.append("unit_variant")
        if any(a in vals[k][1] for a in ("pk", "Pk", "ct", "pcs", "Pcs", "PCS")):
            noise.append("abbreviation")

    # Where each stated value is mentioned: title, description, features (at least one).
    in_title = {k: rng.random() < 0.95 if k == "Brand" else (k in prof.title and rng.random() < 0.8) for k in stated}
    in_desc, in_feat = {}, {}
    for k in stated:
        in_desc[k] = rng.random() < (0.3 if in_title[k] else 0.6)
        in_feat[k] = rng.random() < 0.2 or not (in_title[k] or in_desc[k])
    color_abbr = None
    if in_title.get("Color") and vals["Color"][1] in COLOR_ABBREVIATIONS and rng.random() < 0.5:
        color_abbr = COLOR_ABBREVIATIONS[vals["Color"][1]]  # "Blk" in the title; the colour itself goes elsewhere
        in_desc["Color"] = in_desc["Color"] or not in_feat["Color"]
        noise.append("abbreviation")
    extra = rng.choice(prof.extras) if prof.extras and rng.random() < 0.35 else None
    title = _title(rng, leaf, vals, [k for k in stated if in_title[k]], color_abbr, extra, noise)

    noun = _lower_noun(leaf.noun)
    plural = noun.endswith("s") and not noun.endswith("ss")
    fields = {"n": (noun, None), "u": (prof.use or "for everyday use", None), "is": ("are" if plural else "is", None),
              "a": ("" if plural else "an " if noun[0] in "aeiouAEIOU" else "a ", None),
              "b": (vals["Brand"][1], "Brand")}
    brand_intro = in_desc.get("Brand") or not in_title["Brand"]
    intro = _fill(rng.choice(_INTROS_BRAND if brand_intro else _INTROS), fields)
    sentences = [_fill(rng.choice(ATTRIBUTES[k][1]), {"v": (vals[k][1], k)})
                 for k in stated if k != "Brand" and in_desc[k]]
    bullets = [_fill(rng.choice([k + ": {v}"] + ATTRIBUTES[k][1]), {"v": (vals[k][1], k)})
               for k in stated if in_feat[k]]
    for c, truth in claims.items():
        (sentences if rng.random() < 0.4 else bullets).append(_claim_text(rng, c, truth))
    if rng.random() < 0.5:
        sentences.append(_Text().add(rng.choice(FILLERS)))
    if extra:
        bullets.append(_Text().add(rng.choice(["Includes {}.", "Comes with {}.", "{} included."]).format(extra)))
    if len(bullets) < 2:
        bullets += [_Text().add(b) for b in rng.sample(_GENERIC_BULLETS, 2 - len(bullets))]
    rng.shuffle(sentences)
    rng.shuffle(bullets)
    sentences.insert(0, intro)
    if rng.random() < 0.3:
        for b in bullets:
            b.drop_final_period()
    if rng.random() < 0.2:
        head = _Text().add(rng.choice(_BULLET_HEADS))
        head.extend(bullets[0])
        bullets[0] = head
    description = _Text()
    for i, s in enumerate(sentences):
        if i:
            description.add(" ")
        description.extend(s)

    texts = [(title, "title"), (description, "description")] + [(b, "feature") for b in bullets]
    paragraphs = [Paragraph(t.text, src) for t, src in texts]
    spans = [AttributeSpan(k, paragraphs[pid].text[b:e], pid, b, e)
             for pid, (t, _) in enumerate(texts) for k, b, e in t.spans]
    product = Product(
        id=f"B{index:09d}", title=paragraphs[0].text, category=list(leaf.path), description=paragraphs[1].text,
        brand=vals["Brand"][1], attributes={k: vals[k][1] for k in stated}, paragraphs=paragraphs, spans=spans,
        source=SOURCE,
        meta={"attribute_keys": list(prof.keys), "canonical": {k: vals[k][0] for k in stated}, "claims": claims,
              "profile": leaf.profile, "noun": leaf.noun, "noise": sorted(set(noise))})
    return product, [title] + sentences + bullets


# ---------------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------------

def _evidence(rng: random.Random, units: list[_Text], relevant: list[_Text]) -> list[str]:
    """One relevant sentence (if any) plus one or two unrelated ones, shuffled."""
    picked = [rng.choice(relevant)] if relevant else []
    others = [u for u in units if u not in relevant]
    picked += rng.sample(others, min(len(others), rng.randint(1, 2) + (0 if relevant else 1)))
    rng.shuffle(picked)
    return [u.text for u in picked]


def _other(rng: random.Random, pool: list[str], not_this: str) -> str:
    choices = [x for x in pool if x != not_this]
    return rng.choice(choices) if choices else not_this


def _make_question(rng: random.Random, product: Product, units: list[_Text], leaf: _Leaf,
                   used: list) -> QAItem | None:
    """One grounded question: descriptive, yes/no on a value or a claim, or unanswerable (None: all asked).

    used: ("attr", key) / ("claim", name) already asked about this product; appended to.
    """
    prof = PROFILES[leaf.profile]
    stated = [k for k in product.attributes if ("attr", k) not in used]
    missing = [k for k in prof.keys if k not in product.attributes and ("attr", k) not in used]
    claims = product.meta["claims"]
    told = [c for c in claims if ("claim", c) not in used]
    silent = [c for c in prof.claims if c not in claims and ("claim", c) not in used]
    valued = [k for k in stated if k in VALUE_QUESTIONS]
    r = rng.random()
    kind = ("value" if r < 0.2 and valued else "claim" if r < 0.45 and told else
            "unanswerable" if r < 0.65 and (missing or silent) else "descriptive")
    meta = {"kind": kind, "category": CATEGORY_SEPARATOR.join(product.category)}

    def item(question, answer, evidence, qtype, answerable=True):
        return QAItem(product.id, question, answer, evidence, qtype, answerable, SOURCE, meta)

    if kind == "claim":
        c = rng.choice(told)
        used.append(("claim", c))
        q, _, _, yes, no = CLAIMS[c]
        meta.update(claim=c)
        return item(rng.choice(q), yes if claims[c] else no,
                    _evidence(rng, units, [u for u in units if c in u.claims]), "yesno")
    if kind == "unanswerable":
        if missing and (not silent or rng.random() < 0.5):
            k = rng.choice(missing)
            used.append(("attr", k))
            meta.update(key=k)
            return item(rng.choice(ATTRIBUTES[k][2]), UNANSWERABLE_ANSWER, _evidence(rng, units, []),
                        "descriptive", False)
        c = rng.choice(silent)
        used.append(("claim", c))
        meta.update(claim=c)
        return item(rng.choice(CLAIMS[c][0]), UNANSWERABLE_ANSWER, _evidence(rng, units, []), "yesno", False)
    if kind == "value":
        k = rng.choice(valued)
        used.append(("attr", k))
        canonical, surface = product.meta["canonical"][k], product.attributes[k]
        spec = prof.values.get(k, ATTRIBUTES[k][0])
        pool = (list(COLORS) if k == "Color" and not spec[1] else spec[1] if k == "Color" else
                BRANDS[leaf.branch] if k == "Brand" else spec[1])
        asked = canonical if rng.random() < 0.5 else _other(rng, pool, canonical)
        questions, yes, no = VALUE_QUESTIONS[k]
        meta.update(key=k, asked=asked)
        return item(rng.choice(questions).format(a=asked), (yes if asked == canonical else no).format(v=surface),
                    _evidence(rng, units, [u for u in units if k in u.keys]), "yesno")
    # descriptive; the brand only when nothing else is left (it is in nearly every title)
    if not stated:
        return None
    k = rng.choice([x for x in stated if x != "Brand"] or stated)
    used.append(("attr", k))
    meta.update(key=k)
    _, _, questions, answer = ATTRIBUTES[k]
    return item(rng.choice(questions), answer.format(v=product.attributes[k]),
                _evidence(rng, units, [u for u in units if k in u.keys]), "descriptive")


# ---------------------------------------------------------------------------------------------
# General instructions (mixed into fine-tuning so the model keeps general skills)
# ---------------------------------------------------------------------------------------------

# (from, to, factor, exact)
_CONVERSIONS = [("kg", "g", 1000, True), ("L", "ml", 1000, True), ("m", "cm", 100, True), ("km", "m", 1000, True),
                ("ft", "in", 12, True), ("lb", "oz", 16, True), ("in", "cm", 2.54, True), ("kg", "lb", 2.20462, False),
                ("oz", "g", 28.3495, False), ("gal", "L", 3.78541, False), ("mi", "km", 1.60934, False),
                ("TB", "GB", 1024, True), ("W", "kW", 0.001, True), ("h", "min", 60, True)]
_TERMS = {
    "SKU": "A stock keeping unit, the code a seller uses to identify one product variant in its inventory.",
    "MSRP": "The manufacturer's suggested retail price, the price the maker recommends shops charge.",
    "backorder": "An order for an item that is out of stock; it ships once new stock arrives.",
    "restocking fee": "A charge some shops take when you return an item, to cover handling it again.",
    "free shipping threshold": "The order total above which delivery costs nothing.",
    "bundle": "Several products sold together, usually for less than buying them one by one.",
    "pre-order": "Ordering a product before it is released so it ships on launch day.",
    "warranty": "The maker's promise to repair or replace a product that fails within a set time.",
    "refurbished": "A used product that was checked, repaired if needed and resold, often with a warranty.",
    "flash sale": "A discount that lasts only a short time, often a few hours.",
    "cart abandonment": "When a shopper adds items to the cart but leaves without buying.",
    "variant": "One version of a product, such as a particular size or colour.",
    "net weight": "The weight of the product itself, without its packaging.",
    "price match": "A shop's promise to lower its price to a competitor's lower price.",
    "drop shipping": "Selling products that a supplier ships straight to the customer.",
    "loyalty points": "Credit a shop gives for purchases that can be spent on later orders.",
    "tracking number": "A code that lets you follow a parcel on its way to you.",
    "return window": "The number of days after delivery during which an item can be returned.",
    "out of stock": "The shop has none of the item left to sell right now.",
    "unit price": "The price per unit of measure, such as per 100 g, for comparing pack sizes.",
}
_SITUATIONS = [
    ("my package arrived late", "I'm sorry your package arrived late. Thank you for your patience, and please let us "
                                "know if anything is missing or damaged."),
    ("the item I received is damaged", "I'm sorry the item arrived damaged. Please send us a photo and we will send a "
                                       "replacement or a full refund right away."),
    ("I was charged twice", "I'm sorry about the double charge. We will refund the extra payment; it should appear "
                            "within a few business days."),
    ("I want to return a gift", "Of course. Please share the order number or gift receipt and we will help you with "
                                "the return."),
    ("thank you for the quick delivery", "You're very welcome! We're glad your order arrived quickly. Enjoy it."),
    ("the size I ordered does not fit", "I'm sorry it doesn't fit. You can exchange it for another size free of "
                                        "charge within the return window."),
    ("when will my order ship", "Thank you for asking. Most orders ship within one to two business days, and you will "
                                "get a tracking number by email."),
    ("can I change my delivery address", "Certainly. If the order has not shipped yet, reply with the new address "
                                         "and we will update it."),
]
_NUMBER_WORDS = ["two", "three", "four"]


def _g_convert(rng):
    a, b, f, exact = rng.choice(_CONVERSIONS)
    x = rng.choice([rng.randint(1, 20), rng.randint(1, 20) + 0.5])
    y = _n(x * f)
    prompt = rng.choice(["Convert {x} {a} to {b}.", "How many {b} are in {x} {a}?", "What is {x} {a} in {b}?"])
    return prompt.format(x=_n(x), a=a, b=b), f"{_n(x)} {a} is {'' if exact else 'about '}{y} {b}."


def _g_arithmetic(rng):
    x, y = rng.randint(2, 99), rng.randint(2, 99)
    r = rng.random()
    if r < 0.5:
        op, z = rng.choice([("+", x + y), ("-", x - y), ("*", x * y)])
        return f"What is {x} {op} {y}?", f"{x} {op} {y} = {z}."
    if r < 0.75:
        price, pct = rng.randint(10, 200), rng.choice([10, 15, 20, 25, 30, 40, 50])
        cents = price * (100 - pct)
        return (f"An item costs ${price} and is {pct}% off. What is the sale price?",
                f"The sale price is ${cents // 100}.{cents % 100:02d}.")
    n, cents = rng.randint(2, 9), rng.randint(100, 2500)  # integer cents: no float rounding in the answer
    return (f"You buy {n} items at ${cents // 100}.{cents % 100:02d} each. What is the total?",
            f"The total is ${n * cents // 100}.{n * cents % 100:02d}.")


def _phrase(rng) -> str:
    leaf = rng.choice(LEAVES)
    words = [rng.choice(list(COLORS)), rng.choice(MATERIALS[rng.choice(list(MATERIALS))]).lower(), leaf.noun.lower()]
    if rng.random() < 0.5:
        words.append("with " + rng.choice(["lid", "case", "handle", "stand", "strap", "cover"]))
    return " ".join(words)


def _g_case(rng):
    p = _phrase(rng)
    r = rng.random()
    if r < 0.6:
        return f"Rewrite in title case: {p}", " ".join(w[:1].upper() + w[1:] for w in p.split())
    if r < 0.8:
        return f"Rewrite in upper case: {p}", p.upper()
    return f"Rewrite in lower case: {p.title()}", p.title().lower()


def _g_list(rng):
    n = rng.randint(2, 4)
    groups = {"colors": list(COLORS), "fabrics": [m.lower() for m in MATERIALS["fabric"]],
              "cookware materials": [m.lower() for m in MATERIALS["cookware"]]}
    for node, label in (("Kitchen Appliances", "kitchen appliances"), ("Shoes", "kinds of shoes"),
                        ("Exercise & Fitness", "pieces of fitness equipment"), ("Office Supplies", "office supplies"),
                        ("Toys & Games", "toys or games"), ("Cookware", "kinds of cookware")):
        groups[label] = [_lower_noun(leaf.path[-1]) for leaf in LEAVES if node in leaf.path]
    label = rng.choice(list(groups))
    items = rng.sample(groups[label], n)
    text = ", ".join(items[:-1]) + " and " + items[-1] + "."
    return f"Name {_NUMBER_WORDS[n - 2]} {label}.", text[0].upper() + text[1:]


def _g_define(rng):
    term = rng.choice(list(_TERMS))
    prompt = rng.choice(["What does \"{t}\" mean?", "Define {t}.", "What does {t} mean in online shopping?"])
    return prompt.format(t=term), _TERMS[term]


def _g_reply(rng):
    said, reply = rng.choice(_SITUATIONS)
    return rng.choice(["A customer writes: \"{s}\". Reply politely.", "Write a polite reply to a customer who says "
                       "\"{s}\"."]).format(s=said), reply


def _g_numbers(rng):
    nums = rng.sample(range(1, 100), rng.randint(3, 6))
    r = rng.random()
    if r < 0.4:
        return (f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}",
                ", ".join(map(str, sorted(nums))))
    if r < 0.7:
        return f"Which is the largest: {', '.join(map(str, nums))}?", f"The largest is {max(nums)}."
    p = _phrase(rng)
    return f"How many words are in \"{p}\"?", f"There are {len(p.split())} words."


_GENERAL = [("convert", _g_convert), ("arithmetic", _g_arithmetic), ("case", _g_case), ("list", _g_list),
            ("define", _g_define), ("reply", _g_reply), ("numbers", _g_numbers)]


def _make_general(rng: random.Random, n: int) -> list[Example]:
    out = []
    for i in range(n):
        kind, make = _GENERAL[i % len(_GENERAL)]
        prompt, completion = make(rng)
        out.append(Example(GENERAL_TASK, prompt, completion, {"source": SOURCE, "kind": kind}))
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

@dataclass
class Catalog:
    """A generated (or re-read) catalogue. taxonomy_paths: the leaf category paths, in table order."""
    taxonomy_paths: list[list[str]] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    qa: list[QAItem] = field(default_factory=list)
    general: list[Example] = field(default_factory=list)


def generate_catalog(seed: int = 0, n_products: int = 5000, qa_per_product: int = 2, n_general: int = 400) -> Catalog:
    """Generate the bundled catalogue; the same arguments always give the same catalogue.

    Products cycle through the leaves in a shuffled order (every leaf gets n_products / leaves
    products, give or take one); each product gets up to qa_per_product questions about different
    attributes or claims.
    """
    for name, v in (("n_products", n_products), ("qa_per_product", qa_per_product), ("n_general", n_general)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"generate_catalog: {name} must be a non-negative int, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"generate_catalog: seed must be an int, got {seed!r}")
    rng = random.Random(seed)
    products, qa, order = [], [], []
    for i in range(n_products):
        if i % len(LEAVES) == 0:
            order = list(range(len(LEAVES)))
            rng.shuffle(order)
        leaf = LEAVES[order[i % len(LEAVES)]]
        product, units = _make_product(rng, i, leaf)
        used: list = []
        for _ in range(qa_per_product):
            item = _make_question(rng, product, units, leaf, used)
            if item is None:
                break
            qa.append(item)
        products.append(product)
    general = _make_general(random.Random(f"general/{seed}"), n_general)
    return Catalog([list(leaf.path) for leaf in LEAVES], products, qa, general)


def _taxonomy_nodes(leaf_paths: list[list[str]]) -> list[list[str]]:
    """Every node (leaves and their ancestors) in first-appearance order, so parents precede children."""
    seen, nodes = {}, []
    for path in leaf_paths:
        for depth in range(1, len(path) + 1):
            key = tuple(path[:depth])
            if key not in seen:
                seen[key] = True
                nodes.append(list(key))
    return nodes


def _mave_record(p: Product) -> dict:
    """MAVE schema; keys of the category schema that the text does not state get empty evidences
    (as in MAVE's negatives)."""
    by_key: dict[str, list] = {k: [] for k in p.meta.get("attribute_keys", [])}
    for s in p.spans:
        by_key.setdefault(s.key, []).append({"value": s.value, "pid": s.pid, "begin": s.begin, "end": s.end})
    return {"id": p.id, "category": CATEGORY_SEPARATOR.join(p.category),
            "paragraphs": [{"text": para.text, "source": para.source} for para in p.paragraphs],
            "attributes": [{"key": k, "evidences": ev} for k, ev in by_key.items()]}


def _write_atomic(path: str, lines: Iterator[str]) -> None:
    """Write lines to path via a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary data files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonl(records) -> Iterator[str]:
    for r in records:
        yield json.dumps(r, ensure_ascii=False, sort_keys=False)


def write_catalog(catalog: Catalog, out_dir: str) -> dict[str, str]:
    """Write the catalogue files into out_dir (created if needed); returns {name: path}.

    taxonomy.txt (Google Product Taxonomy format: a `# ` version line, then `ID - A > B > C` for
    every node, parents first, ids 1.. in that order), products.mave.jsonl (MAVE schema),
    products.jsonl / qa.jsonl / general.jsonl (schema.to_dict records). Each file is written
    atomically (temporary file + rename).
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in
             ("taxonomy.txt", "products.mave.jsonl", "products.jsonl", "qa.jsonl", "general.jsonl")}
    nodes = _taxonomy_nodes(catalog.taxonomy_paths)
    _write_atomic(paths["taxonomy.txt"], iter([TAXONOMY_VERSION_LINE] + [
        f"{i} - {CATEGORY_SEPARATOR.join(node)}" for i, node in enumerate(nodes, start=1)]))
    _write_atomic(paths["products.mave.jsonl"], _jsonl(_mave_record(p) for p in catalog.products))
    _write_atomic(paths["products.jsonl"], _jsonl(to_dict(p) for p in catalog.products))
    _write_atomic(paths["qa.jsonl"], _jsonl(to_dict(q) for q in catalog.qa))
    _write_atomic(paths["general.jsonl"], _jsonl(to_dict(e) for e in catalog.general))
    return paths


def read_catalog(out_dir: str) -> Catalog:
    """Read back what write_catalog wrote (taxonomy.txt, products.jsonl, qa.jsonl, general.jsonl)."""
    for name in ("taxonomy.txt", "products.jsonl", "qa.jsonl", "general.jsonl"):
        if not os.path.isfile(os.path.join(out_dir, name)):
            raise DataError(os.path.join(out_dir, name), None, "missing catalogue file")
    taxonomy = load_google_taxonomy(os.path.join(out_dir, "taxonomy.txt"))
    return Catalog([list(p) for p in taxonomy.leaves()],
                   load_records(os.path.join(out_dir, "products.jsonl"), Product),
                   load_records(os.path.join(out_dir, "qa.jsonl"), QAItem),
                   load_records(os.path.join(out_dir, "general.jsonl"), Example))


def pretraining_corpus(catalog: Catalog) -> Iterator[str]:
    """Plain text lines (no newlines inside) for tokenizer training and base-model pre-training:
    category paths; one document per product, like its product page (title, description, feature
    bullets, then its questions and answers); the general instructions with their answers.

    Keeping a product's text in one document matters: values named in the title come back in the
    description, bullets and answers, which is what teaches a small model to copy from context."""
    def one_line(s: str) -> str:
        return " ".join(s.split())

    questions: dict[str, list[QAItem]] = {}
    for q in catalog.qa:
        questions.setdefault(q.product_id, []).append(q)
    for path in catalog.taxonomy_paths:
        yield CATEGORY_SEPARATOR.join(path)
    for p in catalog.products:
        parts = [para.text for para in p.paragraphs]
        parts += [f"Question: {q.question} Answer: {q.answer}" for q in questions.get(p.id, [])]
        yield one_line(" ".join(parts))
    for e in catalog.general:
        yield one_line(f"{e.prompt} {e.completion}")
