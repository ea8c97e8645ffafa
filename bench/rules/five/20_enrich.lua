return require("tally.enrich").rule{ name = "enrich", app = { name = "bench", version = "1.0" }, os = { name = "Linux" }, locale = "en-US" }
