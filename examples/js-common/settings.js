// The example servers' numeric settings from the environment (Node only), checked so that a typo is one line and
// exit code 2 rather than a stack trace or a silently different setting.

/** process.env[name] as a whole number from low to high (fallback when unset); otherwise one line on stderr, exit 2. */
export function wholeFromEnv(name, fallback, low, high) {
  const text = process.env[name] ?? String(fallback);
  const value = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(value >= low && value <= high)) {
    console.error(`error: ${name} must be a whole number from ${low} to ${high}, got '${text}'`);
    process.exit(2);
  }
  return value;
}
