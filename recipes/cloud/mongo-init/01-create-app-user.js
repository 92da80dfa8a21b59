// Runs once, when MongoDB initialises an empty data volume.
db = db.getSiblingDB("smoker");
db.createUser({
  user: "app",
  pwd: process.env.MONGO_APP_PASSWORD,
  roles: [{ role: "readWrite", db: "smoker" }],
});
