db = db.getSiblingDB("smoker");
db.cooks.createIndex({ startedAt: -1 });
db.readings.createIndex({ cookId: 1, at: 1 });
