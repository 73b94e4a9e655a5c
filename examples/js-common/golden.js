// The golden-vector checks both JavaScript consumers' tests apply to an answer (Node only): the contract says a
// printed probability is softmax(logits / temperature) with the model's own temperature.

/** Every way `answer` ({top, logits, calibrated, temperature, familiarity, unfamiliar}) breaks golden.json's `entry`;
 * empty when it holds. */
export function goldenProblems(answer, entry, golden) {
  const problems = [];
  const { logits_atol: logitsAtol, probabilities_atol: probabilitiesAtol } = golden.tolerance;
  if (answer.top[0].index !== entry.predicted) problems.push(`top-1 ${answer.top[0].index}, golden ${entry.predicted}`);
  const logitGap = Math.max(...answer.logits.map((v, i) => Math.abs(v - entry.logits[i])));
  if (!(logitGap <= logitsAtol)) problems.push(`logits differ by ${logitGap} > ${logitsAtol}`);
  if (answer.temperature !== golden.temperature) problems.push(`temperature ${answer.temperature}, golden ${golden.temperature}`);
  if (answer.calibrated !== golden.calibrated) problems.push(`calibrated ${answer.calibrated}, golden ${golden.calibrated}`);
  if ('familiarity' in entry) {
    // a model with the familiarity output: the score within its tolerance, and the same flag
    const gap = Math.abs(answer.familiarity - entry.familiarity);
    if (!(gap <= golden.tolerance.familiarity_atol)) problems.push(`familiarity differs by ${gap} > ${golden.tolerance.familiarity_atol}`);
    if (answer.unfamiliar !== entry.unfamiliar) problems.push(`unfamiliar ${answer.unfamiliar}, golden ${entry.unfamiliar}`);
  }
  // softmax(own logits / T) in double precision: the probabilities must be exactly that, to 1e-6
  const scaled = answer.logits.map((v) => v / golden.temperature);
  const peak = Math.max(...scaled);
  const total = scaled.reduce((sum, v) => sum + Math.exp(v - peak), 0);
  for (const { index, probability } of answer.top) {
    const expected = Math.exp(scaled[index] - peak) / total;
    if (!(Math.abs(probability - expected) <= 1e-6)) problems.push(`p[${index}] ${probability} != softmax(logits / T) ${expected}`);
    const gap = Math.abs(probability - entry.probabilities[index]);
    if (!(gap <= probabilitiesAtol)) problems.push(`p[${index}] differs from the golden ${entry.probabilities[index]} by ${gap}`);
  }
  return problems;
}
