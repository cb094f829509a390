"""Plain English sentences used to calibrate and evaluate the packaged MiniLM (disjoint sets)."""

CALIBRATION_SENTENCES = [
    "The train to the airport leaves every twenty minutes from platform four.",
    "She spent the whole afternoon reading an old novel in the garden.",
    "Our team finally fixed the bug that crashed the server on Mondays.",
    "Heavy rain is expected across the northern coast later this week.",
    "He forgot his umbrella at the restaurant and had to go back for it.",
    "The museum opens a new exhibition about ancient Egyptian jewelry in May.",
    "Please remember to water the plants while I am away on holiday.",
    "The company reported higher profits thanks to strong sales in Asia.",
    "A small bakery on the corner sells the best croissants in town.",
    "The children built a sandcastle and watched the tide wash it away.",
    "Scientists discovered a new species of frog in the rainforest.",
    "My phone battery dies quickly when the screen brightness is high.",
    "The concert was cancelled because the lead singer lost her voice.",
    "Learning a second language takes patience and daily practice.",
    "The city council approved a plan to build more bicycle lanes.",
    "He brewed a pot of strong coffee before starting the long drive.",
    "Most volcanoes form along the boundaries of tectonic plates.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Our flight was delayed for three hours because of fog in London.",
    "The old bridge was closed after engineers found cracks in its pillars.",
    "She trained for months to run her first marathon in Berlin.",
    "The library extended its opening hours during the exam period.",
    "Wind turbines generate electricity without burning fossil fuels.",
    "The detective noticed a muddy footprint near the broken window.",
    "A good night of sleep improves memory and concentration.",
    "The farmers harvested the wheat before the storm arrived.",
    "He plays the violin in a string quartet on weekends.",
    "The software update added a dark mode and fixed several bugs.",
    "Penguins huddle together to stay warm during the Antarctic winter.",
    "The shop offers free delivery on orders over fifty dollars.",
    "Their wedding took place in a vineyard overlooking the valley.",
    "The teacher asked the students to write an essay about their town.",
    "Prices of fresh vegetables rose sharply after the drought.",
    "The spacecraft sent back detailed images of Jupiter's moons.",
    "I usually walk the dog along the river before breakfast.",
    "The hospital hired twenty new nurses to cope with the winter flu.",
    "The chess champion defended her title in a tense final game.",
    "Solar panels on the roof now cover most of the house's energy use.",
    "The movie tells the story of a family that moves to a remote island.",
    "Traffic was slow on the highway because of road works.",
    "The professor explained how vaccines train the immune system.",
    "My grandmother taught me how to knit a warm wool scarf.",
    "The startup raised ten million dollars to expand into Europe.",
    "Honey bees communicate the location of flowers with a dance.",
    "The hotel room had a beautiful view of the mountains.",
    "Firefighters rescued a cat that was stuck on the roof.",
    "The printer in the office keeps jamming when it prints on both sides.",
    "Ancient Romans built aqueducts to carry water into their cities.",
    "The soup tastes better if you let it simmer for an hour.",
    "Our neighbours are renovating their kitchen and the noise never stops.",
    "The river flooded the low fields after a week of storms.",
    "He apologized for arriving late to the meeting.",
    "The election results will be announced tomorrow morning.",
    "A gentle breeze carried the smell of pine trees through the camp.",
    "The algorithm sorts the list in linear time when the keys are small integers.",
    "Tickets for the football final sold out within minutes.",
    "The pharmacist explained how often to take the medicine.",
    "She painted the walls of her bedroom a pale shade of green.",
    "The lake freezes solid every winter and people skate on it.",
    "Engineers are testing a new battery that charges in five minutes.",
    "The guide showed us the ruins of a medieval castle.",
    "I lost my keys somewhere between the station and the office.",
    "The orchestra rehearsed the symphony for the opening night.",
    "Regular exercise lowers the risk of heart disease.",
    "The market sells fresh fish, cheese and homemade bread.",
    "The students built a small robot that can climb stairs.",
    "Clouds gathered over the hills as the evening grew colder.",
    "The judge postponed the trial until next month.",
    "Our cat sleeps on the windowsill whenever the sun is out.",
    "The bank raised its interest rates for the second time this year.",
    "They hiked to the summit and watched the sunrise over the sea.",
    "The new phone has a better camera but a smaller battery.",
    "Volunteers planted hundreds of trees along the motorway.",
    "The author signed copies of her book at the local bookstore.",
    "Whales migrate thousands of kilometres to reach warmer waters.",
    "The restaurant is closed on Sundays and public holidays.",
    "He repaired the bicycle tyre with a patch and some glue.",
    "The conference will focus on renewable energy and climate policy.",
    "Children learn to read faster when their parents read aloud to them.",
    "The museum guard asked the visitors not to touch the paintings.",
]

EVALUATION_SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The weather forecast predicts snow for the weekend.",
    "She ordered a cup of tea and a slice of lemon cake.",
    "The stock market fell sharply after the announcement.",
    "Two dogs are chasing a ball across the park.",
    "The laptop overheats when I run several programs at once.",
    "The government announced new rules for electric scooters.",
    "He is studying medicine at a university in Scotland.",
    "The hikers got lost in the forest and called for help.",
    "This recipe uses fresh tomatoes, garlic and basil.",
    "The airport will open a third runway next year.",
    "My sister adopted a puppy from the animal shelter.",
    "The painting was sold at auction for a record price.",
    "A strong earthquake shook the coastal town last night.",
    "The museum is free for students on Wednesdays.",
    "They watched a documentary about life in the deep ocean.",
    "The manager promised to answer all emails by Friday.",
    "Fresh bread smells wonderful early in the morning.",
    "The spacecraft landed safely after six months in orbit.",
    "The children laughed at the clown's silly tricks.",
    "Our internet connection is very slow in the evenings.",
    "The river is home to many species of fish and birds.",
    "He won the national chess championship at the age of fifteen.",
    "The bus driver waited for the old lady to sit down.",
    "The company plans to hire more engineers next quarter.",
    "A cold wind blew through the empty streets.",
    "The doctor recommended more sleep and less coffee.",
    "The film won three awards at the festival.",
    "Farmers hope for rain after the long dry summer.",
    "The new bridge connects the island with the mainland.",
    "She learned to play the piano when she was seven.",
    "The quarterly report shows steady growth in online sales.",
]

# Short paragraphs (several sentences per calibration sample): more tokens than the FFN width (1,536),
# which least-squares solvers need to be well determined.
CALIBRATION_PARAGRAPHS = [
    "The village sits at the foot of a steep hill, and most of its houses are built from grey stone. "
    "Every Saturday a market fills the main square with stalls selling cheese, honey and vegetables. "
    "In summer, tourists arrive by bus to visit the old church and walk along the river. "
    "During the winter the streets are quiet, and many shops close until spring.",
    "Modern smartphones contain more computing power than the computers that guided the first moon landing. "
    "They combine a processor, memory, several cameras, a satellite receiver and a battery in a thin case. "
    "Because people carry them everywhere, they have changed how we shop, travel and talk to each other. "
    "Critics worry that constant notifications make it harder to concentrate on a single task.",
    "Bread is one of the oldest prepared foods. Early farmers ground wild grains between stones and baked "
    "flat cakes on hot rocks. The discovery of yeast allowed dough to rise, producing a lighter loaf. "
    "Today bakers still rely on the same basic ingredients: flour, water, salt and time.",
    "The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
    "the library needed new computers, while others wanted to repair the roof of the sports hall first. "
    "After a long debate they agreed to split the money and to review the decision in six months.",
    "Rivers shape the land through which they flow. Over thousands of years, running water carves valleys, "
    "carries sand and gravel downstream and builds wide plains near the sea. When a river floods, it spreads "
    "fertile mud over the fields, which is why many early civilizations grew up along great rivers such as "
    "the Nile, the Tigris and the Yangtze.",
    "My first job was in a small bookshop that smelled of dust and coffee. The owner knew every customer by "
    "name and remembered which authors they liked. On quiet afternoons I sorted second-hand books and read "
    "the first pages of anything that looked interesting. I learned more there than in many classrooms.",
    "A healthy diet includes plenty of fruit, vegetables and whole grains, with moderate amounts of meat and "
    "dairy. Doctors recommend drinking water instead of sugary drinks and limiting salt. Regular meals help "
    "to keep energy levels stable during the day, and cooking at home makes it easier to know what you eat.",
    "The storm arrived just after midnight. Wind tore branches from the trees, and rain hammered against the "
    "windows for hours. By morning the power had failed in half of the town, and several roads were blocked "
    "by fallen trees. Workers spent the whole day clearing the damage and restoring electricity.",
    "Computer programs are written as sequences of instructions that a machine can follow. Programmers use "
    "languages such as Python, Java or C to describe what the computer should do. Good code is easy to read, "
    "well tested and divided into small functions, each with a single clear purpose.",
    "The museum's new wing displays paintings from the seventeenth century, including portraits of merchants, "
    "landscapes of flat green fields and quiet scenes of daily life. Visitors can borrow an audio guide that "
    "explains how the artists mixed their paints and why light was so important in their work.",
    "Climate scientists measure the temperature of the air and the oceans at thousands of stations around "
    "the world. Their records show that the planet has warmed over the past century. Rising temperatures "
    "melt glaciers, raise sea levels and change the patterns of rain on which farmers depend.",
    "Learning to ride a bicycle is a rite of passage for many children. At first they wobble and fall, but "
    "with practice they discover how to keep their balance by moving forward. Once learned, the skill is "
    "rarely forgotten, even after many years without riding.",
    "The hotel stands on a cliff above a small harbour. From the balcony guests can watch fishing boats "
    "leave at dawn and return in the afternoon with their catch. The restaurant serves grilled fish, fresh "
    "salads and a lemon tart that has made the place famous along the coast.",
    "Vaccines work by training the immune system to recognise a virus or a bacterium without causing the "
    "disease. After vaccination the body produces antibodies and memory cells, so that a later infection "
    "is fought off quickly. Mass vaccination campaigns have eliminated smallpox and greatly reduced polio.",
    "The football match was tense from the first minute. The home team scored early, but the visitors "
    "equalised just before half time. In the second half both sides missed several chances, and the game "
    "was finally decided by a penalty in the last minute, which sent the crowd into wild celebration.",
    "Trains are one of the most efficient ways to move people and goods over land. A single freight train "
    "can replace hundreds of lorries, and electric trains produce little pollution where they run. Many "
    "countries are investing in high-speed lines that connect large cities in a few hours.",
    "When you start a new garden, it helps to test the soil first. Some plants prefer acid soil, while others "
    "grow best in chalk. Compost improves almost any soil by adding nutrients and helping it hold water. "
    "Beginners often succeed with herbs, lettuce and tomatoes, which grow quickly and need little care.",
    "The company was founded by two friends who met at university. They started in a garage with one "
    "computer and a borrowed printer. Ten years later the business employs four hundred people, has offices "
    "in three countries and sells its software to hospitals and schools.",
    "Owls hunt mainly at night. Their large eyes gather the faint light, and their hearing is so sharp that "
    "some species can catch a mouse moving under snow. Soft feathers allow them to fly almost silently, "
    "so their prey rarely hears them coming.",
    "The city plans to turn an old railway line into a park. The elevated track will be planted with trees "
    "and flowers, and a path will run along its full length. Residents hope the project will bring new life "
    "to the neighbourhood, although some fear that rents will rise as a result.",
    "Writing a good essay starts with a clear question. The writer gathers evidence, organises it into a "
    "logical order and explains how each point supports the argument. A short conclusion sums up the main "
    "ideas, and careful editing removes repetition and unclear sentences.",
    "The expedition reached the base camp after a week of walking through narrow valleys. The climbers rested "
    "for several days so that their bodies could adapt to the thin air. Then, in clear weather, they began "
    "the long climb towards the summit, carrying ropes, tents and oxygen.",
    "Coffee was first grown in the highlands of Ethiopia and Yemen. From there it spread to the coffee houses "
    "of Istanbul, Venice and London, where merchants met to trade news and make deals. Today it is one of the "
    "most traded agricultural products in the world, grown in more than fifty countries.",
    "Our neighbour keeps bees in the corner of his garden. In early summer he opens the hives, checks that the "
    "queen is healthy and removes frames full of honey. He says the bees are calm as long as you move slowly "
    "and never stand in front of the entrance.",
    "Electric cars are becoming more common as batteries become cheaper and charging stations more widespread. "
    "They are quiet, need little maintenance and produce no exhaust fumes. However, drivers still worry about "
    "range on long journeys and about the time it takes to recharge.",
    "The orchestra has about eighty musicians, divided into strings, woodwind, brass and percussion. The "
    "conductor sets the tempo, balances the sections and shapes the music's character. Before each concert "
    "the players tune their instruments to a note played by the first oboe.",
    "In the morning the fog lay so thick over the fields that the farmer could barely see the barn. He fed "
    "the animals, checked the fences and drove the tractor slowly along the lane. By noon the sun had burned "
    "the fog away, and the whole valley shone in bright autumn colours.",
    "Libraries do far more than lend books. They offer free internet access, help people look for jobs, run "
    "reading groups for children and provide a warm, quiet place to study. For many residents the local "
    "library is the only public space where nobody expects them to spend money.",
    "Earthquakes happen when stress builds up along a fault and the rocks suddenly slip. The energy released "
    "travels through the ground as waves, shaking buildings and sometimes triggering landslides or tsunamis. "
    "Engineers design buildings in risky areas to bend rather than break.",
    "The recipe is simple. Fry an onion in olive oil until it is soft, add garlic and chopped tomatoes, and "
    "let the sauce simmer for twenty minutes. Season it with salt, pepper and fresh basil, then serve it over "
    "pasta with grated cheese.",
    "The ancient city was abandoned more than a thousand years ago, and its ruins were covered by the jungle. "
    "Archaeologists have since uncovered temples, palaces and ball courts, as well as stone tablets carved "
    "with a writing system that scholars are still working to understand.",
    "Good sleep matters as much as diet and exercise. Adults need about seven to nine hours a night. Screens "
    "in the evening, caffeine late in the day and irregular hours all make it harder to fall asleep, while a "
    "dark, cool bedroom and a regular routine help.",
    "The new student felt nervous on her first day. She did not know anyone, and the building seemed huge and "
    "confusing. At lunch, however, a girl from her class invited her to sit at their table, and by the end of "
    "the week she had made several friends.",
    "Ships carry most of the world's trade. Huge container vessels move cars, clothes, machines and food "
    "between continents, loaded and unloaded by giant cranes in a matter of hours. A single ship can carry "
    "more than twenty thousand containers.",
    "The mountain road climbs in tight bends through pine forests and past small lakes. In winter it is often "
    "closed by snow, but in summer it attracts cyclists, who struggle up the slopes and then race down the "
    "other side. At the top there is a small hut that sells soup and hot chocolate.",
    "Mathematics is the language of science. Physicists describe motion with equations, biologists model the "
    "growth of populations, and economists use statistics to study markets. Even music has a mathematical "
    "structure, built on ratios of frequencies and regular patterns of rhythm.",
    "Volunteers cleaned the beach on Sunday morning. In three hours they collected more than two hundred bags "
    "of rubbish, mostly plastic bottles, fishing nets and food packaging. The organisers hope that the event "
    "will encourage visitors to take their litter home.",
    "The theatre company is staging a new version of a classic comedy. The actors wear modern clothes, and the "
    "story has been moved to a busy office, but the jokes about love, money and pride are as funny as ever. "
    "Tickets for the opening week have already sold out.",
    "Wolves live in packs led by a breeding pair. They hunt together, share food and raise their young as a "
    "group. After being driven out of much of Europe, wolves have returned to several regions, where farmers "
    "and conservationists debate how to live alongside them.",
    "The bank's new mobile application lets customers pay bills, transfer money and check their balance from "
    "their phones. Security experts advise users to choose strong passwords, to enable two-step verification "
    "and never to share codes received by text message.",
]
