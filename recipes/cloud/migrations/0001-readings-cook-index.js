// Adds the compound index the history page needs.
const { MongoClient } = require("mongodb");
(async () => {
  const client = await MongoClient.connect(process.env.MONGO_URL);
  await client.db().collection("readings").createIndex({ cookId: 1, at: 1 });
  await client.close();
})();
