return require("tally.sample").rule{ name = "sample", rate = 1.0, key = "anonymousId" }
