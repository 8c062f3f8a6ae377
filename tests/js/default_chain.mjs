// Resolve credentials through the SDK's default Node.js chain (which reaches IMDS last),
// then sign one real call with them. Prints one JSON line for the Python test to read.
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import { fromNodeProviderChain } from "@aws-sdk/credential-providers";

const apiUrl = process.argv[2];
const provider = fromNodeProviderChain();
const credentials = await provider();
const sts = new STSClient({ region: "us-east-1", endpoint: apiUrl, credentials: provider });
const identity = await sts.send(new GetCallerIdentityCommand({}));
console.log(JSON.stringify({
  accessKeyId: credentials.accessKeyId,
  expiration: credentials.expiration?.toISOString(),
  account: identity.Account,
}));
