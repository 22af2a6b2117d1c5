import 'reflect-metadata';
import { plainToInstance, Type } from 'class-transformer';
import {
  IsInt,
  IsOptional,
  IsString,
  Max,
  MaxLength,
  Min,
  ValidateNested,
  validateSync,
} from 'class-validator';
import { validationMessages } from './validation-messages';

class Limits {
  @IsInt()
  @Min(8)
  @Max(100)
  pids!: number;
}

class Body {
  @IsString()
  @MaxLength(8)
  name!: string;

  @IsInt()
  @Min(16)
  @Max(1024)
  memory!: number;

  @IsOptional()
  @IsInt()
  @Min(1)
  count?: number;

  @IsOptional()
  @ValidateNested()
  @Type(() => Limits)
  limits?: Limits;
}

const messages = (body: object) =>
  validationMessages(
    validateSync(plainToInstance(Body, body), { whitelist: true, forbidNonWhitelisted: true }),
  );

describe('validationMessages', () => {
  it('names a field left out as required, once, instead of listing the rules an absent value fails', () => {
    expect(messages({ name: 'a' })).toEqual(['memory is required']);
    expect(messages({})).toEqual(['name is required', 'memory is required']);
  });

  it('says only that a value has the wrong type, not that it is out of range too', () => {
    expect(messages({ name: 'a', memory: 'two' })).toEqual(['memory must be an integer number']);
    expect(messages({ name: 5, memory: 64 })).toEqual(['name must be a string']);
  });

  it('lists every rule a value of the right type breaks', () => {
    expect(messages({ name: 'a', memory: 4 })).toEqual(['memory must not be less than 16']);
    expect(messages({ name: 'abcdefghij', memory: 64 })).toEqual([
      'name must be shorter than or equal to 8 characters',
    ]);
  });

  it('keeps optional fields optional, and names unknown fields as class-validator does', () => {
    expect(messages({ name: 'a', memory: 64 })).toEqual([]);
    expect(messages({ name: 'a', memory: 64, colour: 'red' })).toEqual(['property colour should not exist']);
  });

  it('says what is wrong with a value that is not an object of a known shape, and says it once', () => {
    const unknown = validateSync({ not: 'a class instance' }, { forbidUnknownValues: true });
    expect(validationMessages(unknown)).toEqual(['an unknown value was passed to the validate function']);
    class Items {
      @IsInt({ each: true })
      items!: number[];
    }
    expect(validationMessages(validateSync(plainToInstance(Items, { items: ['a', 'b'] })))).toEqual([
      'each value in items must be an integer number',
    ]);
  });

  it('names nested fields by their path', () => {
    expect(messages({ name: 'a', memory: 64, limits: {} })).toEqual(['limits.pids is required']);
    expect(messages({ name: 'a', memory: 64, limits: { pids: 1 } })).toEqual([
      'limits.pids must not be less than 8',
    ]);
    expect(messages({ name: 'a', memory: 64, limits: { pids: 10, x: 1 } })).toEqual([
      'limits.property x should not exist',
    ]);
  });
});
