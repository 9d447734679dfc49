// The official Node SDK's long-connection client (@larksuiteoapi/node-sdk), used the way a
// user would: WSClient + EventDispatcher with a no-op im.message.receive_v1 handler,
// loggerLevel warn. Run by bench/compare-ws-clients; arguments: <base_url> <app_id>
// <app_secret>.
'use strict';
const lark = require('@larksuiteoapi/node-sdk');

const [baseUrl, appId, appSecret] = process.argv.slice(2);
const eventDispatcher = new lark.EventDispatcher({ loggerLevel: lark.LoggerLevel.warn }).register({
  'im.message.receive_v1': async () => {},
});
const client = new lark.WSClient({
  appId,
  appSecret,
  domain: baseUrl,
  loggerLevel: lark.LoggerLevel.warn,
});
client.start({ eventDispatcher }); // runs until the benchmark kills the process
