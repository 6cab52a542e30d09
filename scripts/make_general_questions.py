"""The question files forgetting is measured on:  python scripts/make_general_questions.py

Writes two files next to `tuneforge/evaluate/forgetting.py`:

- `general_questions.jsonl`: short general questions with one checkable answer, each row
  `{"category": ..., "messages": [user turn], "accept": [...]}`. An answer is right when an accepted word or
  phrase appears in it as a whole word, case-insensitive (`forgetting.answers_correctly`), so accept lists
  carry synonyms, spellings, digits and number words ("7", "seven"), and never a word that a wrong answer
  would naturally contain. The first 20 rows are the original set, kept as they were (categories added).
  Arithmetic rows are generated from a fixed seed with small numbers; the answer is never one of the
  operands, so a model that only restates the question is not counted right.
- `instruction_checks.jsonl`: IFEval-style prompts with verifiable constraints (lowercase only, at most N
  words, exactly N bullet points, ...), each row `{"category": "instructions", "messages": [...],
  "instruction_id_list": [...], "kwargs": [...]}`, scored by the `if-verifiable` package's IFEval checkers.

The questions are written for this project (no benchmark's text) and are disjoint from the prompts that
training replays against forgetting (`tuneforge/data/general_prompts.txt`). The script is deterministic:
running it again writes the same bytes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tuneforge" / "evaluate"
SEED = 17

ORIGINAL = [  # the first 20 questions, as they were (the 3 open-ended ones now carry a loose check)
    ("geography", "What is the capital of France?", ["Paris"]),
    ("calendar", "How many days are there in a week?", ["7", "seven"]),
    ("arithmetic", "What is 12 times 7?", ["84", "eighty-four", "eighty four"]),
    ("science", "Name the largest planet in our solar system.", ["Jupiter"]),
    ("science", "What gas do plants absorb from the air?", ["carbon dioxide", "CO2"]),
    ("language", "Translate 'good morning' into Spanish.", ["buenos días", "buenos dias"]),
    ("history", "Who wrote the play Romeo and Juliet?", ["Shakespeare"]),
    ("science", "What is the boiling point of water in degrees Celsius at sea level?", ["100"]),
    (
        "language",
        "Give one synonym for the word 'happy'.",
        [
            "joyful",
            "glad",
            "cheerful",
            "content",
            "delighted",
            "pleased",
            "elated",
            "merry",
            "jolly",
            "joyous",
            "ecstatic",
            "thrilled",
            "blissful",
            "upbeat",
        ],
    ),
    ("language", "What is the opposite of 'cold'?", ["hot", "warm", "heat"]),
    ("geography", "How many continents are there?", ["7", "seven"]),
    ("science", "What does a thermometer measure?", ["temperature"]),
    (
        "nature",
        "Write one sentence about the ocean.",  # on topic: words about the sea, not the question's own
        ["water", "waves", "sea", "seas", "salt", "salty", "marine", "fish", "whales", "tides", "deep", "blue"],
    ),
    ("everyday", "What color do you get when you mix blue and yellow?", ["green"]),
    ("arithmetic", "What is the square root of 81?", ["9", "nine"]),
    ("nature", "Which animal is known as the king of the jungle?", ["lion", "lions"]),
    ("science", "What is the chemical symbol for water?", ["H2O", "H₂O"]),
    ("computing", "Explain in one sentence what a computer program is.", ["instructions", "instruction"]),
    ("geography", "What language is mainly spoken in Brazil?", ["Portuguese"]),
    (
        "nature",
        "List three fruits.",
        [
            "apple",
            "apples",
            "banana",
            "bananas",
            "orange",
            "oranges",
            "grape",
            "grapes",
            "strawberry",
            "strawberries",
            "mango",
            "mangoes",
            "pear",
            "pears",
            "peach",
            "peaches",
            "cherry",
            "cherries",
            "kiwi",
            "pineapple",
            "lemon",
            "lemons",
            "watermelon",
            "blueberries",
            "plum",
            "plums",
        ],
    ),
]

# Countries whose capitals training replays (general_prompts.txt) are left out, and so is France (above).
CAPITALS = [
    ("Germany", ["Berlin"]),
    ("Spain", ["Madrid"]),
    ("Portugal", ["Lisbon"]),
    ("Russia", ["Moscow"]),
    ("China", ["Beijing", "Peking"]),
    ("the United Kingdom", ["London"]),
    ("Greece", ["Athens"]),
    ("Ireland", ["Dublin"]),
    ("Austria", ["Vienna"]),
    ("Poland", ["Warsaw"]),
    ("Sweden", ["Stockholm"]),
    ("Denmark", ["Copenhagen"]),
    ("Finland", ["Helsinki"]),
    ("the Netherlands", ["Amsterdam"]),
    ("Belgium", ["Brussels"]),
    ("Hungary", ["Budapest"]),
    ("the Czech Republic", ["Prague"]),
    ("Turkey", ["Ankara"]),
    ("Argentina", ["Buenos Aires"]),
    ("Chile", ["Santiago"]),
    ("Colombia", ["Bogotá", "Bogota"]),
    ("Cuba", ["Havana"]),
    ("South Korea", ["Seoul"]),
    ("Thailand", ["Bangkok"]),
    ("Vietnam", ["Hanoi"]),
    ("Indonesia", ["Jakarta"]),
    ("the Philippines", ["Manila"]),
    ("Iran", ["Tehran"]),
    ("Nigeria", ["Abuja"]),
    ("Ethiopia", ["Addis Ababa"]),
    ("Morocco", ["Rabat"]),
    ("Switzerland", ["Bern", "Berne"]),
    ("New Zealand", ["Wellington"]),
    ("Brazil", ["Brasília", "Brasilia"]),
    ("the United States", ["Washington"]),
    ("Ukraine", ["Kyiv", "Kiev"]),
    ("Saudi Arabia", ["Riyadh"]),
    ("Pakistan", ["Islamabad"]),
]
CAPITAL_PHRASES = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital city of {}."]

GEOGRAPHY = [
    ("Which ocean is the largest on Earth?", ["Pacific"]),
    ("On which continent is Egypt?", ["Africa"]),
    ("What is the longest river in South America?", ["Amazon"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("What is the largest hot desert in the world?", ["Sahara"]),
    ("On which continent is Argentina?", ["South America"]),
    ("Which European country is shaped like a boot?", ["Italy"]),
    ("In which country are the pyramids of Giza?", ["Egypt"]),
    ("What is the largest country in the world by area?", ["Russia"]),
    ("Which sea lies between Europe and Africa?", ["Mediterranean"]),
    ("Which river flows through London?", ["Thames"]),
    ("Which river flows through Paris?", ["Seine"]),
    ("In which country is the city of Tokyo?", ["Japan"]),
    ("In which country is the Eiffel Tower?", ["France"]),
    ("Which ocean lies between Europe and North America?", ["Atlantic"]),
    ("What is the coldest continent?", ["Antarctica"]),
    ("In which country is the Great Wall?", ["China"]),
    ("What is the largest island in the world?", ["Greenland"]),
    ("In which US state is Hollywood?", ["California"]),
    ("Which country lies directly north of the United States?", ["Canada"]),
    ("In which city is the Colosseum?", ["Rome"]),
    ("In which city is the Statue of Liberty?", ["New York"]),
    ("Which country has the city of Barcelona?", ["Spain"]),
    ("On which continent is India?", ["Asia"]),
    ("What is the name of the line that divides the Earth into northern and southern halves?", ["equator"]),
]

SCIENCE = [
    ("Which planet is closest to the Sun?", ["Mercury"]),
    ("At how many degrees Celsius does water freeze?", ["0", "zero"]),
    ("What is the chemical symbol for gold?", ["Au"]),
    ("What is the chemical symbol for iron?", ["Fe"]),
    ("What is the chemical symbol for sodium?", ["Na"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What force pulls objects toward the ground?", ["gravity", "gravitational"]),
    ("How many planets are in our solar system?", ["8", "eight"]),
    ("What is the hardest natural substance?", ["diamond", "diamonds"]),
    ("What gas do humans breathe out?", ["carbon dioxide", "CO2"]),
    ("Which gas do people need to breathe in to stay alive?", ["oxygen"]),
    ("What is the centre of an atom called?", ["nucleus", "nuclei"]),
    ("What is the natural satellite that orbits the Earth called?", ["Moon"]),
    ("What instrument do scientists use to see very small things?", ["microscope", "microscopes"]),
    ("What instrument do astronomers use to look at distant stars?", ["telescope", "telescopes"]),
    ("Water is made of hydrogen and which other element?", ["oxygen"]),
    ("Which planet has the most famous rings?", ["Saturn"]),
    ("What is the study of living things called?", ["biology"]),
    ("What is the scientific study of stars and planets called?", ["astronomy", "astrophysics"]),
    ("What process do green plants use to make food from sunlight?", ["photosynthesis"]),
    ("What is water called when it is frozen solid?", ["ice"]),
    ("What is the name of the star at the centre of our solar system?", ["Sun"]),
    ("What do we call a scientist who studies rocks?", ["geologist", "geologists"]),
    ("Which light gas makes party balloons float?", ["helium"]),
    ("What is the boiling point of water in degrees Fahrenheit?", ["212"]),
    ("What is the chemical formula of table salt?", ["NaCl"]),
    ("What does a barometer measure?", ["pressure"]),
    ("Which is the smallest planet in our solar system?", ["Mercury"]),
    ("How long does the Earth take to travel once around the Sun?", ["year", "365"]),
    ("How many hours does the Earth take to spin once on its axis?", ["24", "twenty-four", "twenty four"]),
    ("What is the name of the galaxy we live in?", ["Milky Way"]),
    ("What kind of energy does a moving object have?", ["kinetic"]),
    ("What is the tiny basic unit of all living things called?", ["cell", "cells"]),
    ("Which metal is liquid at room temperature?", ["mercury"]),
    ("What do we call molten rock that comes out of a volcano?", ["lava", "magma"]),
]

NATURE = [
    ("How many legs does an insect have?", ["6", "six"]),
    ("What is the largest mammal on Earth?", ["blue whale", "whale"]),
    ("What is the fastest land animal?", ["cheetah", "cheetahs"]),
    ("Which animal has a very long neck and eats leaves from tall trees?", ["giraffe", "giraffes"]),
    ("Which white bird is a symbol of peace?", ["dove", "doves"]),
    ("What does a caterpillar turn into?", ["butterfly", "butterflies", "moth"]),
    ("What is a baby dog called?", ["puppy", "pup", "puppies"]),
    ("What is a baby cat called?", ["kitten", "kittens"]),
    ("What is a baby cow called?", ["calf", "calves"]),
    ("What is a baby sheep called?", ["lamb", "lambs"]),
    ("What is a young frog called?", ["tadpole", "tadpoles", "polliwog"]),
    ("What sweet food do bees make?", ["honey"]),
    ("Which African animal has black and white stripes?", ["zebra", "zebras"]),
    ("What do giant pandas mostly eat?", ["bamboo"]),
    ("What do fish use to breathe underwater?", ["gills"]),
    ("What is a group of wolves called?", ["pack"]),
    ("What is the largest bird in the world?", ["ostrich", "ostriches"]),
    ("Which bird cannot fly and lives in Antarctica?", ["penguin", "penguins"]),
    ("Which farm animal says 'moo'?", ["cow", "cows"]),
    ("Which bird says 'quack'?", ["duck", "ducks"]),
    ("Which animal has a trunk?", ["elephant", "elephants"]),
    ("Which lizard is famous for changing the colour of its skin?", ["chameleon", "chameleons"]),
    ("How many hearts does an octopus have?", ["3", "three"]),
    ("How many arms does an octopus have?", ["8", "eight"]),
    ("What kind of animal is a whale?", ["mammal", "mammals"]),
    ("Which animal is called man's best friend?", ["dog", "dogs"]),
    ("What do you call an animal that eats only plants?", ["herbivore", "herbivores", "herbivorous"]),
    ("What do you call an animal that eats only meat?", ["carnivore", "carnivores", "carnivorous"]),
    ("Which tree do acorns grow on?", ["oak", "oaks"]),
    ("What white flakes fall from the sky when it is very cold?", ["snow", "snowflakes"]),
    ("What is a huge sea wave caused by an earthquake called?", ["tsunami", "tsunamis"]),
    ("Which insect glows in the dark on summer nights?", ["firefly", "fireflies", "lightning bug", "glow-worm"]),
    ("What is a male chicken called?", ["rooster", "roosters", "cockerel", "cock"]),
    ("What is a female horse called?", ["mare", "mares"]),
    ("In which cold region around the North Pole do polar bears live?", ["Arctic"]),
    ("How many legs does a bird have?", ["2", "two"]),
    ("What is the hard outer covering of a turtle called?", ["shell", "shells"]),
    ("What do we call the part of a plant that grows underground and takes in water?", ["root", "roots"]),
    ("Which animal is known for building dams in rivers?", ["beaver", "beavers"]),
    ("What is the largest cat in the world?", ["tiger", "tigers"]),
    ("What do hens lay?", ["eggs", "egg"]),
]

CALENDAR = [
    ("How many months are in a year?", ["12", "twelve"]),
    ("How many hours are in a day?", ["24", "twenty-four", "twenty four"]),
    ("How many minutes are in an hour?", ["60", "sixty"]),
    ("How many seconds are in a minute?", ["60", "sixty"]),
    ("How many days are in a leap year?", ["366"]),
    ("How many days are in a year that is not a leap year?", ["365"]),
    ("What day comes after Monday?", ["Tuesday"]),
    ("What day comes before Friday?", ["Thursday"]),
    ("What day comes after Saturday?", ["Sunday"]),
    ("What month comes after March?", ["April"]),
    ("What month comes before December?", ["November"]),
    ("What month comes after July?", ["August"]),
    ("What is the first month of the year?", ["January"]),
    ("What is the last month of the year?", ["December"]),
    ("Which month has the fewest days?", ["February"]),
    ("How many days does February have in a leap year?", ["29", "twenty-nine", "twenty nine"]),
    ("How many days are in September?", ["30", "thirty"]),
    ("How many weeks are in a year?", ["52", "fifty-two", "fifty two"]),
    ("How many years are in a century?", ["100", "hundred"]),
    ("How many years are in a decade?", ["10", "ten"]),
    ("How many hours are in two days?", ["48", "forty-eight", "forty eight"]),
    ("How many minutes are in half an hour?", ["30", "thirty"]),
    ("How many days are in a fortnight?", ["14", "fourteen"]),
    ("Which season comes after winter?", ["spring"]),
    ("Which season comes after summer?", ["autumn", "fall"]),
    ("What is the coldest season of the year?", ["winter"]),
    ("What is the warmest season of the year?", ["summer"]),
    ("If today is Wednesday, what day is it tomorrow?", ["Thursday"]),
    ("If today is Sunday, what day was yesterday?", ["Saturday"]),
    ("Which day is two days after Monday?", ["Wednesday"]),
    ("How many hours are there from 9 am to 5 pm?", ["8", "eight"]),
    ("What is 3 pm on a 24-hour clock?", ["15:00", "1500", "15"]),
    ("What is the third month of the year?", ["March"]),
    ("Which month comes between May and July?", ["June"]),
    ("How many seconds are in an hour?", ["3600", "3,600"]),
]

UNITS = [
    ("How many centimetres are in a metre?", ["100", "hundred"]),
    ("How many millimetres are in a centimetre?", ["10", "ten"]),
    ("How many metres are in a kilometre?", ["1000", "1,000", "thousand"]),
    ("How many grams are in a kilogram?", ["1000", "1,000", "thousand"]),
    ("How many millilitres are in a litre?", ["1000", "1,000", "thousand"]),
    ("How many inches are in a foot?", ["12", "twelve"]),
    ("How many feet are in a yard?", ["3", "three"]),
    ("How many ounces are in a pound?", ["16", "sixteen"]),
    ("How many cents are in a US dollar?", ["100", "hundred"]),
    ("How many sides does a triangle have?", ["3", "three"]),
    ("How many sides does a square have?", ["4", "four"]),
    ("How many sides does a hexagon have?", ["6", "six"]),
    ("How many sides does a pentagon have?", ["5", "five"]),
    ("How many sides does an octagon have?", ["8", "eight"]),
    ("How many degrees are in a right angle?", ["90", "ninety"]),
    ("How many degrees are in a full circle?", ["360"]),
    ("What unit is electric current measured in?", ["ampere", "amperes", "amp", "amps"]),
    ("What is the SI unit of power?", ["watt", "watts", "joules per second", "J/s"]),
    ("What does the abbreviation 'km' stand for?", ["kilometre", "kilometer", "kilometres", "kilometers"]),
    ("What does the abbreviation 'kg' stand for?", ["kilogram", "kilograms", "kilogramme"]),
    ("What does the abbreviation 'ml' stand for?", ["millilitre", "milliliter", "millilitres", "milliliters"]),
    ("How many hours is 120 minutes?", ["2", "two"]),
    ("How many metres are in 3 kilometres?", ["3000", "3,000", "three thousand"]),
    ("How many grams are in half a kilogram?", ["500", "five hundred"]),
    ("What is the unit of electrical resistance?", ["ohm", "ohms", "Ω"]),
    ("What is the unit of frequency?", ["hertz", "Hz"]),
    ("What does a ruler measure?", ["length", "lengths", "distance"]),
    ("How many items are in a dozen?", ["12", "twelve"]),
    ("How many things make a pair?", ["2", "two"]),
    ("How many sides does a rectangle have?", ["4", "four"]),
    ("What do you call a shape with eight sides?", ["octagon"]),
    ("What is the name of a triangle whose three sides are all equal?", ["equilateral"]),
]

OPPOSITES = [
    ("up", ["down"]),
    ("day", ["night"]),
    ("wet", ["dry"]),
    ("full", ["empty"]),
    ("rich", ["poor"]),
    ("early", ["late"]),
    ("high", ["low"]),
    ("left", ["right"]),
    ("top", ["bottom"]),
    ("push", ["pull"]),
    ("buy", ["sell"]),
    ("above", ["below", "beneath", "under"]),
    ("open", ["closed", "shut", "close"]),
    ("win", ["lose", "loss"]),
    ("young", ["old", "elderly"]),
]
PLURALS = [
    ("mouse", ["mice"]),
    ("child", ["children"]),
    ("foot", ["feet"]),
    ("tooth", ["teeth"]),
    ("goose", ["geese"]),
    ("person", ["people", "persons"]),
    ("knife", ["knives"]),
    ("woman", ["women"]),
    ("leaf", ["leaves"]),
    ("city", ["cities"]),
]
TRANSLATIONS = [
    ("dog", "Spanish", ["perro"]),
    ("cat", "Spanish", ["gato"]),
    ("water", "Spanish", ["agua"]),
    ("house", "Spanish", ["casa"]),
    ("hello", "Spanish", ["hola"]),
    ("hello", "French", ["bonjour", "salut"]),
    ("cat", "French", ["chat"]),
    ("yes", "French", ["oui"]),
    ("water", "German", ["Wasser"]),
    ("dog", "German", ["Hund"]),
    ("house", "German", ["Haus"]),
    ("hello", "Italian", ["ciao", "salve"]),
    ("bread", "French", ["pain"]),
    ("friend", "Spanish", ["amigo", "amiga"]),
]
PAST_TENSES = [("go", ["went"]), ("eat", ["ate"]), ("run", ["ran"]), ("write", ["wrote"]), ("swim", ["swam"])]
LANGUAGE_OTHER = [
    ("How many letters are in the English alphabet?", ["26", "twenty-six", "twenty six"]),
    ("How many vowels are in the English alphabet?", ["5", "five"]),
]

HISTORY = [
    ("Who was the first person to walk on the Moon?", ["Armstrong"]),
    ("Who was the first President of the United States?", ["Washington"]),
    ("In which year did World War II end?", ["1945"]),
    ("In which year did World War I begin?", ["1914"]),
    ("Who painted the ceiling of the Sistine Chapel?", ["Michelangelo"]),
    ("Who painted 'The Starry Night'?", ["van Gogh", "Gogh"]),
    ("Who composed the Moonlight Sonata?", ["Beethoven"]),
    ("Who wrote the novel 'Pride and Prejudice'?", ["Austen"]),
    ("Who wrote the Harry Potter books?", ["Rowling"]),
    ("Who developed the theory of relativity?", ["Einstein"]),
    ("Who discovered penicillin?", ["Fleming"]),
    ("Who is credited with inventing the telephone?", ["Bell"]),
    ("Who is famous for inventing a practical light bulb?", ["Edison"]),
    ("Which scientist described the three laws of motion?", ["Newton"]),
    ("Which ancient people built the pyramids at Giza?", ["Egyptians", "Egyptian"]),
    ("In which country did the ancient Olympic Games begin?", ["Greece"]),
    ("Which famous ship sank in 1912 after hitting an iceberg?", ["Titanic"]),
    ("Who was the first woman to win a Nobel Prize?", ["Curie"]),
    ("What language did the ancient Romans speak?", ["Latin"]),
    ("Who was the British prime minister for most of World War II?", ["Churchill"]),
    ("Which ancient Greek poet is said to have written the Odyssey?", ["Homer"]),
    ("Which country gave the Statue of Liberty to the United States?", ["France"]),
    ("What is the name of the famous clock tower in London?", ["Big Ben", "Elizabeth Tower"]),
    ("Which scientist proposed evolution by natural selection?", ["Darwin"]),
    ("Which queen of ancient Egypt was allied with Mark Antony?", ["Cleopatra"]),
    ("Which musical instrument has 88 keys?", ["piano", "pianos"]),
    ("How many strings does a standard guitar have?", ["6", "six"]),
    ("How many players does a soccer team have on the field?", ["11", "eleven"]),
    ("In which sport do players compete at Wimbledon?", ["tennis"]),
    ("How many rings are on the Olympic flag?", ["5", "five"]),
    ("Which holiday is celebrated on December 25th?", ["Christmas"]),
    ("Which chess piece can only move diagonally?", ["bishop", "bishops"]),
    ("How many squares are on a chessboard?", ["64", "sixty-four", "sixty four"]),
    ("What is the name of the fairy in Peter Pan?", ["Tinker Bell", "Tinkerbell"]),
    ("Who wrote the fairy tale 'The Little Mermaid'?", ["Andersen"]),
    ("In which city is the Taj Mahal?", ["Agra"]),
    ("Which explorer sailed across the Atlantic to the Americas in 1492?", ["Columbus"]),
]

BODY = [
    ("Which organ pumps blood around the body?", ["heart", "hearts"]),
    ("Which organ do we think with?", ["brain", "brains"]),
    ("Which organs do we breathe with?", ["lungs", "lung"]),
    ("How many lungs does a person have?", ["2", "two"]),
    ("How many bones are in the adult human body?", ["206"]),
    ("How many teeth does an adult usually have?", ["32", "thirty-two", "thirty two"]),
    ("What is the largest organ of the human body?", ["skin"]),
    ("What is the longest bone in the human body?", ["femur", "thigh bone", "thighbone"]),
    ("How many toes are on one human foot?", ["5", "five"]),
    ("Which part of the body do we see with?", ["eye", "eyes"]),
    ("Which part of the body do we hear with?", ["ear", "ears"]),
    ("Which part of the body do we smell with?", ["nose"]),
    ("What is the coloured part of the eye called?", ["iris"]),
    ("Which vitamin does the skin make from sunlight?", ["vitamin D"]),
    ("What red liquid carries oxygen around the body?", ["blood"]),
    ("What do we call a doctor who treats teeth?", ["dentist", "dentists"]),
    ("What is normal human body temperature in degrees Celsius?", ["37"]),
    ("What tissue connects muscles to bones?", ["tendon", "tendons"]),
    ("Which organs filter the blood and make urine?", ["kidney", "kidneys"]),
    ("What bony case protects the brain?", ["skull", "cranium"]),
    ("How many chambers does the human heart have?", ["4", "four"]),
    ("Which organ mixes food with acid after you swallow it?", ["stomach"]),
    ("What should you use with water to wash germs off your hands?", ["soap"]),
    ("What instrument does a doctor use to listen to your heart?", ["stethoscope", "stethoscopes"]),
    ("Which part of the body do we taste with?", ["tongue"]),
    ("What is the joint in the middle of the leg called?", ["knee", "knees"]),
    ("What is the joint in the middle of the arm called?", ["elbow", "elbows"]),
    ("Which mineral in milk helps build strong bones?", ["calcium"]),
    ("What are the bones of the spine called?", ["vertebrae", "vertebra"]),
    ("What muscle under the lungs helps us breathe?", ["diaphragm"]),
]

EVERYDAY = [
    ("What color do you get when you mix red and white?", ["pink"]),
    ("What color do you get when you mix red and yellow?", ["orange"]),
    ("What color do you get when you mix blue and red?", ["purple", "violet"]),
    ("What color do you get when you mix black and white?", ["grey", "gray"]),
    ("What color is a ripe banana?", ["yellow"]),
    ("What color is fresh grass?", ["green"]),
    ("What color is the sky on a clear sunny day?", ["blue"]),
    ("What color is fresh snow?", ["white"]),
    ("What color is coal?", ["black"]),
    ("What color is a ripe tomato?", ["red"]),
    ("What color is a stop sign?", ["red"]),
    ("What color is milk chocolate?", ["brown"]),
    ("What color are carrots?", ["orange"]),
    ("What color is a lemon?", ["yellow"]),
    ("Which traffic light color means 'go'?", ["green"]),
    ("What tool is used to cut paper?", ["scissors"]),
    ("What is used to write on a blackboard?", ["chalk"]),
    ("What do people write with on paper?", ["pen", "pens", "pencil", "pencils"]),  # not "the key to unlocking..."
    ("What is used to brush teeth?", ["toothbrush", "toothbrushes"]),
    ("What is used to keep the rain off your head?", ["umbrella", "umbrellas"]),
    ("What is used to dry yourself after a shower?", ["towel", "towels"]),
    ("Which kitchen appliance keeps food cold?", ["fridge", "refrigerator", "freezer"]),
    ("What is used to boil water for tea?", ["kettle", "kettles"]),
    ("What is used to eat soup?", ["spoon", "spoons"]),
    ("What piece of furniture do you sit on at a desk?", ["chair", "chairs"]),
    ("What tool is used to drive a nail into wood?", ["hammer", "hammers"]),
    ("What is stuck on an envelope before it is posted?", ["stamp", "stamps", "postage"]),
    ("What do you call the room where food is cooked?", ["kitchen"]),
    ("What is used to sweep the floor?", ["broom", "brooms"]),
    ("How many wheels does a bicycle have?", ["2", "two"]),
    ("How many wheels does a car usually have?", ["4", "four"]),
    ("What is worn on the wrist to tell the time?", ["watch", "wristwatch", "watches"]),
    ("What shape is a coin?", ["round", "circle", "circular", "disc", "disk"]),
    (
        "What is used to see in the dark when there is a power cut?",
        ["torch", "flashlight", "candle", "candles", "lamp"],
    ),
    ("Which piece of cutlery has prongs for picking up food?", ["fork", "forks"]),
]

COMPUTING = [
    ("What does CPU stand for?", ["central processing unit"]),
    ("What does RAM stand for?", ["random access memory", "random-access memory"]),
    ("How many bits are in a byte?", ["8", "eight"]),
    ("What does 'www' stand for in a web address?", ["World Wide Web", "World-Wide Web"]),
    ("What does USB stand for?", ["Universal Serial Bus"]),
    ("What does HTML stand for?", ["HyperText Markup Language", "Hyper Text Markup Language"]),
    ("What does URL stand for?", ["Uniform Resource Locator", "Universal Resource Locator"]),
    ("What does PDF stand for?", ["Portable Document Format"]),
    ("What does GPU stand for?", ["graphics processing unit"]),
    ("What does AI stand for?", ["artificial intelligence"]),
    ("What number system uses only the digits 0 and 1?", ["binary", "base 2", "base-2"]),
    ("What device do you move on the desk to control the pointer on a screen?", ["mouse", "mice"]),
    ("What device with keys do you type letters on?", ["keyboard", "keyboards"]),
    ("What is a program for visiting websites called?", ["browser", "browsers"]),
    ("What is unwanted junk email called?", ["spam"]),
    (
        "What do we call a harmful program that spreads from computer to computer?",
        ["virus", "viruses", "malware", "worm"],
    ),
    ("Which key do you press on a keyboard to start a new line?", ["Enter", "Return"]),
    (
        "Which keyboard shortcut copies selected text on Windows?",
        ["Ctrl+C", "Ctrl-C", "Ctrl + C", "Control+C", "Control-C", "Ctrl C", "Control C"],
    ),
    ("Which company makes the iPhone?", ["Apple"]),
    ("Which company makes the Windows operating system?", ["Microsoft"]),
    ("Who founded Microsoft together with Paul Allen?", ["Gates"]),
    ("What is the binary number 11 in decimal?", ["3", "three"]),
    ("Which programming language shares its name with a large snake?", ["Python"]),
    ("What does the 'e' in email stand for?", ["electronic"]),
    ("What do programmers call a mistake in a program?", ["bug", "bugs", "error", "errors"]),
    ("What is the main chip that runs programs in a computer called?", ["CPU", "processor", "microprocessor"]),
    ("What does PC stand for when talking about computers?", ["personal computer"]),
    ("What is a small picture on a screen that you click to open a program called?", ["icon", "icons"]),
    ("What do you call the secret word you type to log in to an account?", ["password", "passwords", "passcode"]),
    ("How many different values can one bit have?", ["2", "two"]),
]

IF_CHECKS = [  # (prompt, [(instruction id, kwargs), ...]) with kwargs exactly as the IFEval checker takes them
    (
        "Describe a sunny day in two sentences. Write your whole answer in lowercase letters, with no capital letters "
        "at all.",
        [("change_case:english_lowercase", {})],
    ),
    (
        "Explain what a library is. Your entire answer must be in English and in lowercase letters only.",
        [("change_case:english_lowercase", {})],
    ),
    (
        "Tell me why people like going to the beach. Use only lowercase letters; do not use any capital letters.",
        [("change_case:english_lowercase", {})],
    ),
    (
        "Give a short tip for learning to cook, written entirely in lowercase letters.",
        [("change_case:english_lowercase", {})],
    ),
    (
        "Name three animals that live on a farm. Write your entire answer in English using only CAPITAL LETTERS.",
        [("change_case:english_capital", {})],
    ),
    (
        "Say something kind to a friend who is feeling sad. Your whole answer must be in capital letters.",
        [("change_case:english_capital", {})],
    ),
    (
        "What is your favourite season and why? Answer in English, in all capital letters.",
        [("change_case:english_capital", {})],
    ),
    (
        "List some things you can find in a kitchen. Do not use any commas in your answer.",
        [("punctuation:no_comma", {})],
    ),
    ("Describe a rainy afternoon without using a single comma.", [("punctuation:no_comma", {})]),
    ("Explain how to plant a seed. Your answer must not contain any commas.", [("punctuation:no_comma", {})]),
    ("Write two sentences about the moon and do not use commas anywhere.", [("punctuation:no_comma", {})]),
    (
        "In fewer than 20 words, explain what a bicycle is.",
        [("length_constraints:number_words", {"num_words": 20, "relation": "less than"})],
    ),
    (
        "Describe a cup of coffee in fewer than 15 words.",
        [("length_constraints:number_words", {"num_words": 15, "relation": "less than"})],
    ),
    (
        "What is a forest? Answer in fewer than 25 words.",
        [("length_constraints:number_words", {"num_words": 25, "relation": "less than"})],
    ),
    (
        "Tell me what a map is for, using fewer than 12 words.",
        [("length_constraints:number_words", {"num_words": 12, "relation": "less than"})],
    ),
    (
        "Write at least 40 words about why people enjoy music.",
        [("length_constraints:number_words", {"num_words": 40, "relation": "at least"})],
    ),
    (
        "Describe your ideal weekend in at least 50 words.",
        [("length_constraints:number_words", {"num_words": 50, "relation": "at least"})],
    ),
    (
        "Explain why sleep is important. Use at least 30 words.",
        [("length_constraints:number_words", {"num_words": 30, "relation": "at least"})],
    ),
    (
        "Write a sentence about a walk in the park that includes the word 'river'.",
        [("keywords:existence", {"keywords": ["river"]})],
    ),
    (
        "Describe a city at night. Make sure to use the words 'lights' and 'quiet'.",
        [("keywords:existence", {"keywords": ["lights", "quiet"]})],
    ),
    (
        "Write a short thank-you message to a teacher that contains the word 'patience'.",
        [("keywords:existence", {"keywords": ["patience"]})],
    ),
    (
        "Give advice for a job interview and include the words 'smile' and 'prepare'.",
        [("keywords:existence", {"keywords": ["smile", "prepare"]})],
    ),
    ("Describe a cat without using the word 'cat'.", [("keywords:forbidden_words", {"forbidden_words": ["cat"]})]),
    (
        "Explain what rain is without using the words 'water' or 'cloud'.",
        [("keywords:forbidden_words", {"forbidden_words": ["water", "cloud"]})],
    ),
    (
        "Describe a bicycle ride without using the word 'wheel'.",
        [("keywords:forbidden_words", {"forbidden_words": ["wheel"]})],
    ),
    (
        "Describe the sea and use the word 'blue' at least twice.",
        [("keywords:frequency", {"keyword": "blue", "frequency": 2, "relation": "at least"})],
    ),
    (
        "Write about a garden and use the word 'flower' at least three times.",
        [("keywords:frequency", {"keyword": "flower", "frequency": 3, "relation": "at least"})],
    ),
    (
        "Tell a tiny story about a dog, and use the word 'happy' at least two times.",
        [("keywords:frequency", {"keyword": "happy", "frequency": 2, "relation": "at least"})],
    ),
    (
        "Write a sentence about a zoo in which the letter 'z' appears at least 3 times.",
        [("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"})],
    ),
    (
        "Write a short line about a quiet evening in which the letter 'q' appears at least twice.",
        [("keywords:letter_frequency", {"letter": "q", "let_frequency": 2, "let_relation": "at least"})],
    ),
    (
        "Give one tip for staying healthy. End your answer with the exact phrase 'Have a nice day!' and write nothing "
        "after it.",
        [("startend:end_checker", {"end_phrase": "Have a nice day!"})],
    ),
    (
        "Explain why we brush our teeth. Finish your answer with the exact words 'Is there anything else?'",
        [("startend:end_checker", {"end_phrase": "Is there anything else?"})],
    ),
    (
        "Describe a good breakfast. The last words of your answer must be 'Enjoy your meal.'",
        [("startend:end_checker", {"end_phrase": "Enjoy your meal."})],
    ),
    (
        "Say why reading is useful, and end your reply with the phrase 'That is all.'",
        [("startend:end_checker", {"end_phrase": "That is all."})],
    ),
    ("What is a good breakfast? Wrap your whole answer in double quotation marks.", [("startend:quotation", {})]),
    (
        "Suggest a name for a new coffee shop. Put your entire answer inside double quotes.",
        [("startend:quotation", {})],
    ),
    (
        "Give me a motto for a football team, and wrap your entire response in double quotation marks.",
        [("startend:quotation", {})],
    ),
    (
        "Give exactly 3 bullet points about how to save water. Use markdown bullets such as:\n* point one",
        [("detectable_format:number_bullet_lists", {"num_bullets": 3})],
    ),
    (
        "List exactly 2 reasons to drink water, as markdown bullet points starting with '* '.",
        [("detectable_format:number_bullet_lists", {"num_bullets": 2})],
    ),
    (
        "Give exactly 4 bullet points with packing tips for a trip. Use '* ' at the start of each bullet.",
        [("detectable_format:number_bullet_lists", {"num_bullets": 4})],
    ),
    (
        "Name exactly 3 vegetables as a markdown bullet list (each line starting with '* ') and nothing else.",
        [("detectable_format:number_bullet_lists", {"num_bullets": 3})],
    ),
    (
        "Write a two-line poem about rain. Give it a title wrapped in double angular brackets, such as <<my title>>.",
        [("detectable_format:title", {})],
    ),
    (
        "Write a short note about spring. Include a title in double angular brackets, like <<title>>.",
        [("detectable_format:title", {})],
    ),
    (
        "Describe a train journey in a few sentences, starting with a title wrapped in << and >>.",
        [("detectable_format:title", {})],
    ),
    (
        "Give the name and colour of a fruit as JSON. Your whole answer must be valid JSON and nothing else.",
        [("detectable_format:json_format", {})],
    ),
    (
        'Return a JSON object with the keys "city" and "country" for any city you like. Output only JSON.',
        [("detectable_format:json_format", {})],
    ),
    (
        "List two planets as a JSON array. Reply with the JSON only, no other text.",
        [("detectable_format:json_format", {})],
    ),
    (
        "Explain how to make a cup of tea and highlight at least 2 parts with markdown, like *this part*.",
        [("detectable_format:number_highlighted_sections", {"num_highlights": 2})],
    ),
    (
        "Describe a sunset. Highlight at least one phrase using markdown asterisks, for example *golden light*.",
        [("detectable_format:number_highlighted_sections", {"num_highlights": 1})],
    ),
    (
        "Give three study tips and highlight at least 3 key words with markdown, like *focus*.",
        [("detectable_format:number_highlighted_sections", {"num_highlights": 3})],
    ),
    (
        "Write about a day at school in 2 sections. Start each section with 'Section 1' and 'Section 2'.",
        [("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2})],
    ),
    (
        "Describe breakfast and dinner in 2 parts. Mark the start of each part with PART 1 and PART 2.",
        [("detectable_format:multiple_sections", {"section_spliter": "PART", "num_sections": 2})],
    ),
    (
        "Is the sky blue during the day? Answer with one of the following options: 'My answer is yes.', "
        "'My answer is no.', 'My answer is maybe.'",
        [("detectable_format:constrained_response", {})],
    ),
    (
        "Can a fish climb a tree? Reply with one of these options only: 'My answer is yes.', 'My answer is no.', "
        "'My answer is maybe.'",
        [("detectable_format:constrained_response", {})],
    ),
    (
        "Will it rain tomorrow? Respond with exactly one of: 'My answer is yes.', 'My answer is no.', "
        "'My answer is maybe.'",
        [("detectable_format:constrained_response", {})],
    ),
    (
        "Write a short note inviting a friend to lunch. At the end, add a postscript starting with P.S.",
        [("detectable_content:postscript", {"postscript_marker": "P.S."})],
    ),
    (
        "Write a two-sentence message to a neighbour about a lost cat. Add a postscript at the end that starts with "
        "P.S.",
        [("detectable_content:postscript", {"postscript_marker": "P.S."})],
    ),
    (
        "Write a short template for a party invitation with at least 2 placeholders in square brackets, such as "
        "[date].",
        [("detectable_content:number_placeholders", {"num_placeholders": 2})],
    ),
    (
        "Write a short thank-you letter template. Use at least 3 placeholders in square brackets, like [name].",
        [("detectable_content:number_placeholders", {"num_placeholders": 3})],
    ),
    (
        "Write a one-line message template for a delivery driver, with a placeholder in square brackets for the time.",
        [("detectable_content:number_placeholders", {"num_placeholders": 1})],
    ),
    (
        "Write two short paragraphs about dogs. Separate the paragraphs with the markdown divider ***.",
        [("length_constraints:number_paragraphs", {"num_paragraphs": 2})],
    ),
    (
        "Write 3 very short paragraphs about the sea, separated from each other by ***.",
        [("length_constraints:number_paragraphs", {"num_paragraphs": 3})],
    ),
    (
        "Give two different names for a pet rabbit. Separate the two answers with six asterisks: ******",
        [("combination:two_responses", {})],
    ),
    (
        "Suggest two different slogans for a bakery, separated by six asterisk symbols like this: ******",
        [("combination:two_responses", {})],
    ),
    (
        "What is a good name for a bakery? First repeat the request above word for word without change, then give "
        "your answer (do not say anything before repeating the request; the request to repeat does not include this "
        "sentence).",
        [("combination:repeat_prompt", {"prompt_to_repeat": "What is a good name for a bakery?"})],
    ),
    (
        "Name a fruit that is yellow. First repeat the request above word for word without change, then give your "
        "answer (do not say anything before repeating the request; the request to repeat does not include this "
        "sentence).",
        [("combination:repeat_prompt", {"prompt_to_repeat": "Name a fruit that is yellow."})],
    ),
    (
        "Réponds uniquement en français : quel temps fait-il en été ?",
        [("language:response_language", {"language": "fr"})],
    ),
    (
        "Answer only in Spanish, no English at all: what is your favourite food?",
        [("language:response_language", {"language": "es"})],
    ),
    ("Answer in German only: describe a house in one sentence.", [("language:response_language", {"language": "de"})]),
    # Two constraints at once: the prompt passes only when both hold.
    (
        "Describe a winter morning in lowercase letters only and without any commas.",
        [("change_case:english_lowercase", {}), ("punctuation:no_comma", {})],
    ),
    (
        "In fewer than 30 words and without commas, explain what a clock does.",
        [("length_constraints:number_words", {"num_words": 30, "relation": "less than"}), ("punctuation:no_comma", {})],
    ),
    (
        "Give exactly 3 bullet points about exercise using '* ' bullets, and include the word 'walk'.",
        [("detectable_format:number_bullet_lists", {"num_bullets": 3}), ("keywords:existence", {"keywords": ["walk"]})],
    ),
    (
        "Write a tiny poem about stars with a title in double angular brackets like <<title>>, and do not use any "
        "commas.",
        [("detectable_format:title", {}), ("punctuation:no_comma", {})],
    ),
    (
        "Tell me about apples in fewer than 40 words and end with the exact phrase 'Any other questions?'",
        [
            ("length_constraints:number_words", {"num_words": 40, "relation": "less than"}),
            ("startend:end_checker", {"end_phrase": "Any other questions?"}),
        ],
    ),
    (
        "Describe a river in capital letters only, using at least 20 words.",
        [
            ("change_case:english_capital", {}),
            ("length_constraints:number_words", {"num_words": 20, "relation": "at least"}),
        ],
    ),
    (
        "Write a short welcome message for a hotel guest. Wrap it in double quotes and include the word 'comfortable'.",
        [("startend:quotation", {}), ("keywords:existence", {"keywords": ["comfortable"]})],
    ),
    (
        "List 2 benefits of walking as '* ' bullet points, without using the word 'healthy'.",
        [
            ("detectable_format:number_bullet_lists", {"num_bullets": 2}),
            ("keywords:forbidden_words", {"forbidden_words": ["healthy"]}),
        ],
    ),
    (
        "Write a note to a friend about a film you liked, in lowercase letters, ending with a postscript starting "
        "with P.S.",
        [("change_case:english_lowercase", {}), ("detectable_content:postscript", {"postscript_marker": "P.S."})],
    ),
    (
        "What is the tallest animal? Answer in fewer than 10 words.",
        [("length_constraints:number_words", {"num_words": 10, "relation": "less than"})],
    ),
    (
        "Name the colours of a rainbow. Use no commas and write in lowercase only.",
        [("punctuation:no_comma", {}), ("change_case:english_lowercase", {})],
    ),
    (
        "Describe a library in fewer than 25 words, and highlight one word with markdown like *this*.",
        [
            ("length_constraints:number_words", {"num_words": 25, "relation": "less than"}),
            ("detectable_format:number_highlighted_sections", {"num_highlights": 1}),
        ],
    ),
]


NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> list[str]:
    """The spellings a model may use for n (0..999): "42" -> ["42", "forty-two", "forty two"]."""
    if n < 20:
        return [str(n), NUMBER_WORDS[n]]
    if n < 100:
        tens, ones = divmod(n, 10)
        return (
            [str(n), TENS[tens]]
            if not ones
            else [str(n), f"{TENS[tens]}-{NUMBER_WORDS[ones]}", f"{TENS[tens]} {NUMBER_WORDS[ones]}"]
        )
    hundreds, rest = divmod(n, 100)
    head = f"{NUMBER_WORDS[hundreds]} hundred"
    if not rest:
        return [str(n), head]
    return (
        [str(n)] + [f"{head} and {w}" for w in number_words(rest)[1:]] + [f"{head} {w}" for w in number_words(rest)[1:]]
    )


def arithmetic(rng: random.Random, n: int) -> list[tuple[str, list[str]]]:
    """Small sums, differences, products, halves and doubles in a few phrasings; the answer is never an operand."""
    forms = [
        ("Add {a} and {b}.", lambda a, b: a + b, (2, 30), (2, 30)),
        ("What is {a} + {b}?", lambda a, b: a + b, (2, 50), (2, 50)),
        ("What do you get when you add {b} to {a}?", lambda a, b: a + b, (5, 40), (2, 20)),
        ("What is {a} minus {b}?", lambda a, b: a - b, (10, 50), (2, 9)),
        ("Subtract {b} from {a}.", lambda a, b: a - b, (10, 40), (2, 9)),
        ("What is {a} - {b}?", lambda a, b: a - b, (20, 99), (10, 19)),
        ("What is {a} multiplied by {b}?", lambda a, b: a * b, (2, 9), (2, 9)),
        ("What is {a} x {b}?", lambda a, b: a * b, (2, 12), (2, 5)),
        ("What is {c} divided by {b}?", None, (2, 9), (2, 9)),
        ("What is half of {c}?", None, (4, 60), None),
        ("What is double {a}?", None, (3, 40), None),
    ]
    rows, seen = [], set()
    while len(rows) < n:
        text, op, (lo, hi), second = forms[len(rows) % len(forms)]
        a = rng.randint(lo, hi)
        b = rng.randint(*second) if second else None
        if text.startswith("What is half"):
            a = a * 2 if a % 2 else a
            question, answer, operands = text.format(c=a), a // 2, {a}
        elif text.startswith("What is double"):
            question, answer, operands = text.format(a=a), 2 * a, {a}
        elif "divided" in text:
            question, answer, operands = text.format(c=a * b, b=b), a, {a * b, b}
        else:
            question, answer, operands = text.format(a=a, b=b), op(a, b), {a, b}
        if answer in operands or answer <= 1 or question in seen:
            continue
        seen.add(question)
        rows.append((question, number_words(answer)))
    return rows


def general_rows() -> list[dict]:
    rng = random.Random(SEED)
    table: list[tuple[str, str, list[str]]] = list(ORIGINAL)
    table += [
        ("geography", CAPITAL_PHRASES[i % len(CAPITAL_PHRASES)].format(country), accept)
        for i, (country, accept) in enumerate(CAPITALS)
    ]
    table += [("geography", q, a) for q, a in GEOGRAPHY]
    table += [("arithmetic", q, a) for q, a in arithmetic(rng, 48)]
    table += [("science", q, a) for q, a in SCIENCE]
    table += [("nature", q, a) for q, a in NATURE]
    table += [("calendar", q, a) for q, a in CALENDAR]
    table += [("units", q, a) for q, a in UNITS]
    table += [("language", f"What is the opposite of '{w}'?", a) for w, a in OPPOSITES]
    table += [("language", f"What is the plural of '{w}'?", a) for w, a in PLURALS]
    table += [("language", f"How do you say '{w}' in {lang}?", a) for w, lang, a in TRANSLATIONS]
    table += [("language", f"What is the past tense of '{w}'?", a) for w, a in PAST_TENSES]
    table += [("language", q, a) for q, a in LANGUAGE_OTHER]
    table += [("history", q, a) for q, a in HISTORY]
    table += [("body", q, a) for q, a in BODY]
    table += [("everyday", q, a) for q, a in EVERYDAY]
    table += [("computing", q, a) for q, a in COMPUTING]
    return [{"category": c, "messages": [{"role": "user", "content": q}], "accept": a} for c, q, a in table]


def instruction_rows() -> list[dict]:
    return [
        {
            "category": "instructions",
            "messages": [{"role": "user", "content": prompt}],
            "instruction_id_list": [i for i, _ in checks],
            "kwargs": [k for _, k in checks],
        }
        for prompt, checks in IF_CHECKS
    ]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"{path}: {len(rows)} rows")


def main() -> int:
    write(OUT / "general_questions.jsonl", general_rows())
    write(OUT / "instruction_checks.jsonl", instruction_rows())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
