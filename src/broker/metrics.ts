/**
 * Prometheus metrics (prom-client). The hot paths only increment counters; gauges that describe
 * state (services by status, tunnels, channels, bytes through the gateway) are read when
 * /metrics is scraped. `noMetrics` is the null object for code and tests that need none.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export type VerifyOutcome = 'ok' | 'invalid' | 'throttled';

export interface Metrics {
  verify(outcome: VerifyOutcome): void;
  keyIssued(): void;
  request(method: string, route: string, status: number, seconds: number): void;
  render(): Promise<{ contentType: string; body: string }>;
}

export const noMetrics: Metrics = {
  verify: () => {},
  keyIssued: () => {},
  request: () => {},
  render: async () => ({ contentType: 'text/plain', body: '' }),
};

export interface StateSources {
  servicesByStatus(): Record<string, number>;
  tunnelsOpen(): number;
  channelsOpen(): number;
  gatewayBytes(): number;
}

export class PromMetrics implements Metrics {
  private readonly registry = new Registry();
  private readonly verifies: Counter<'result'>;
  private readonly keys: Counter;
  private readonly latency: Histogram<'method' | 'route' | 'status'>;

  constructor(state: StateSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'broker_' });
    this.verifies = new Counter({
      name: 'broker_verify_total',
      help: 'Key verifications by result',
      labelNames: ['result'],
      registers,
    });
    this.keys = new Counter({
      name: 'broker_keys_issued_total',
      help: 'Client keys minted by load',
      registers,
    });
    this.latency = new Histogram({
      name: 'broker_http_request_duration_seconds',
      help: 'API request latency by route and status class',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    new Gauge({
      name: 'broker_services',
      help: 'Registered services by status',
      labelNames: ['status'],
      registers,
      collect() {
        this.reset();
        for (const [status, n] of Object.entries(state.servicesByStatus())) this.set({ status }, n);
      },
    });
    new Gauge({
      name: 'broker_tunnels_open',
      help: 'Live reverse tunnels',
      registers,
      collect() {
        this.set(state.tunnelsOpen());
      },
    });
    new Gauge({
      name: 'broker_gateway_channels_open',
      help: 'Open forwards through the gateway',
      registers,
      collect() {
        this.set(state.channelsOpen());
      },
    });
    let seen = 0;
    new Counter({
      name: 'broker_gateway_bytes_total',
      help: 'Bytes carried through the SSH gateway',
      registers,
      collect() {
        const now = state.gatewayBytes();
        if (now > seen) this.inc(now - seen);
        seen = now;
      },
    });
  }

  verify(outcome: VerifyOutcome): void {
    this.verifies.inc({ result: outcome });
  }

  keyIssued(): void {
    this.keys.inc();
  }

  /** Labelled histogram children, cached: prom-client hashes a label object on every observe. */
  private readonly children = new Map<string, { observe(v: number): void }>();

  request(method: string, route: string, status: number, seconds: number): void {
    const cls = `${Math.floor(status / 100)}xx`;
    const k = `${method} ${route} ${cls}`;
    let child = this.children.get(k);
    if (!child) {
      child = this.latency.labels({ method, route, status: cls });
      this.children.set(k, child);
    }
    child.observe(seconds);
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
