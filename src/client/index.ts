/** The client SDK: talk to the broker (BrokerClient) with the shared discovery and error types. */
export {
  BrokerClient,
  localhostLookup,
  type BrokerClientOptions,
  type KeyInfo,
} from './broker-client.js';
export { discoverCredentials, type Credentials, type DiscoverOptions } from './credentials.js';
export * from '../protocol/index.js';
export { openTunnel, connect, handshake, Tunnel, type TunnelOptions } from './tunnel.js';
export { gatewayInfo, knownHostsLine, sshConnect, type GatewayInfo } from './ssh.js';
