return require("tally.naming").rule{ name = "naming", style = "lower", property_case = "snake", mode = "fix" }
