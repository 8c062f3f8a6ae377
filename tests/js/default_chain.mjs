// Resolve credentials through the SDK's default Node.js chain (the container provider, or
// IMDS last), then, given an API URL, sign one real call with them. Prints one JSON line for
// the Python test to read.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { fromNodeProviderChain } from "@aws-sdk/credential-providers";

const apiUrl = process.argv[2];
const provider = fromNodeProviderChain();
const credentials = await provider();
let account;
if (apiUrl) {
  const sts = new STSClient({ region: "us-east-1", endpoint: apiUrl, credentials: provider });
  account = (await sts.send(new GetCallerIdentityCommand({}))).Account;
}
console.log(JSON.stringify({
  accessKeyId: credentials.accessKeyId,
  expiration: credentials.expiration?.toISOString(),
  account,
}));
