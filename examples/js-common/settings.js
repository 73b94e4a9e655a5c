// What the example servers and the load test share (Node only): numbers from the environment, checked so that a typo is one line and
// exit code 2 rather than a stack trace or a silently different setting; the words for a model file not found; and a
// request's URL.

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

/**
 * Why the model file given as `modelPath` could not be read, in words. Node decodes the command line and the
 * environment as UTF-8, so a name whose bytes are not UTF-8 (a Latin-1 "café") arrives with U+FFFD in their place
 * and names no file: "no such model file" alone sent the user looking at a file that exists.
 */
export function modelFileProblem(modelPath, error) {
  if (error.code !== 'ENOENT') return error.message;
  return modelPath.includes('\uFFFD')
    ? 'no such model file as Node reads the name: its bytes are not UTF-8 (shown as \uFFFD) and Node opens files ' +
        'by UTF-8 names only; rename the file or its folder, or link to it (ln -s)'
    : 'no such model file';
}

/**
 * A request's URL with its path as sent. `new URL(request.url, base)` reads '//predict' as a host named 'predict',
 * and throws on '//[', which ended the page server.
 */
export function requestUrl(request) {
  return new URL(`http://localhost${request.url.startsWith('/') ? request.url : `/${request.url}`}`);
}
